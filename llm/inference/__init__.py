"""Inference: KV-cache generation, decoding strategies, beam search, speculative decoding,
watermarking and an OpenAI-compatible server (see docs/inference.md)."""

from llm.inference.engine import Completion, Engine, Event, StopCriteria
from llm.inference.sampling import GREEDY, SamplingParams

__all__ = ["GREEDY", "Completion", "Engine", "Event", "SamplingParams", "StopCriteria"]
