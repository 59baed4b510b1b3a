"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691): P learned virtual-token embeddings.

    tree, axes = init_prompt(cfg.peft, abstract_params(cfg.model), logical_axes(cfg.model), key)
    extras = prompt_extras(tree)   # what `forward(..., extras=...)` prepends to every sequence

The frozen decoder reads [prompt; tokens] and the loss sees the real tokens' outputs only
(llm/model/extras.py), so the virtual tokens carry no loss. In a packed row every document
sees the prompt, as if each had it prepended (its tokens are in segment `SHARED`).

Init: uniform in [-0.5, 0.5], the paper's random initialisation (sec. 3). Initialising from
vocabulary embeddings works better in the paper but needs the decoder's weights, which the
init does not see (it runs on the abstract tree). Unlike LoRA, step 0 is not the base
model: the virtual tokens always change what the real ones attend to.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec

from llm.config.peft import PeftConfig
from llm.model.extras import Extras
from llm.typing import PyTree

NAME = "prompt"  # the component's name in the params / frozen trees


def prompt_axes(cfg: PeftConfig, model: PyTree, axes: PyTree) -> PyTree:
    """[P, embed]: sharded like the token embedding's model dimension."""
    del cfg, model, axes
    return {"prompt": PartitionSpec(None, "embed")}


def init_prompt(
    cfg: PeftConfig, model: PyTree, axes: PyTree, key: jax.Array
) -> tuple[PyTree, PyTree]:
    """(tree, axes): `prompt` [n_virtual_tokens, d_model] in the embedding's dtype."""
    embed = model["token_embed"]
    shape = (cfg.n_virtual_tokens, embed.shape[1])
    prompt = jax.random.uniform(key, shape, embed.dtype, minval=-0.5, maxval=0.5)
    return {"prompt": prompt}, prompt_axes(cfg, model, axes)


def prompt_extras(tree: PyTree) -> Extras:
    return Extras(prompt_PD=tree["prompt"])


def n_trainable(tree: PyTree) -> int:
    """P * d_model."""
    return math.prod(tree["prompt"].shape)
