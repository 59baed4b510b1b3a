"""Calibration activations: what each layer, and each `Linear` in it, reads on real text.

    tokens_BL = calibration_tokens(tokenizer, n_seqs=64, seq_len=256)
    x_BLD = embed_inputs(cfg, params, tokens_BL)              # what layer 0 reads
    for i in range(cfg.n_layers):
        layer = layer_params(params, i)
        X = linear_inputs(cfg, layer, x_BLD)   # {"attn/q/w": X_MK, ..., "mlp/down/w": X_MK}
        ...                                    # quantize / prune the layer from X
        x_BLD = run_layer(cfg, new_layer, x_BLD)

Calibrated compression (GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT) works one layer at a time on
the activations the already-compressed layers before it produce (GPTQ's sequential scheme,
arXiv:2210.17323 sec. 4), so errors are corrected rather than compounded, and only one layer's
activations are ever held. The inputs of a block's `Linear`s are read by running the block
with each `Linear.record` set under `nnx.capture` (an `nnx.Intermediate` sown inside
the module): the model
definition is not copied, so any block the model builds is calibrated the same way.

The text comes from the *training* split of a built-in corpus (the same cleaning and split as
training), never from the validation split or Milton, which evaluation scores.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.config import DataConfig, ModelConfig
from llm.data import prepare_documents, split_documents
from llm.model.functional import abstract_model
from llm.model.layers import Linear
from llm.model.quantized import BLOCK_LINEARS, get_path, weight_layouts  # noqa: F401 (get_path re-exported)
from llm.ops.masks import default_positions
from llm.typing import Array, PyTree

CHARS_PER_TOKEN = 8  # generous: a window of seq_len * 8 characters holds seq_len tokens


def calibration_tokens(
    tokenizer,
    *,
    n_seqs: int = 64,
    seq_len: int = 256,
    seed: int = 0,
    corpus: str = "shakespeare",
    data_cfg: DataConfig | None = None,
) -> np.ndarray:
    """[n_seqs, seq_len] int32 windows of the training split of `corpus`, drawn with `seed`:
    a document chosen in proportion to its length, then a random character offset in it."""
    data_cfg = data_cfg or DataConfig()
    docs, _ = prepare_documents(data_cfg, corpus)
    train = split_documents(docs, data_cfg.val_fraction, data_cfg.seed)["train"]
    lengths = np.array([len(d.text) for d in train], np.float64)
    rng = np.random.default_rng(seed)
    out = np.zeros((n_seqs, seq_len), np.int32)
    for row in range(n_seqs):
        ids = _window(train[rng.choice(len(train), p=lengths / lengths.sum())].text, seq_len, rng,
                      tokenizer)  # fmt: skip
        if len(ids) < seq_len:
            raise ValueError(
                f"calibration: a document of {corpus} holds fewer than {seq_len} tokens; "
                "use a shorter --calib-len"
            )
        out[row] = ids[:seq_len]
    return out


def _window(text: str, seq_len: int, rng: np.random.Generator, tokenizer) -> list[int]:
    span = seq_len * CHARS_PER_TOKEN
    start = int(rng.integers(0, max(len(text) - span, 0) + 1))
    return tokenizer.encode(text[start : start + span])


@functools.lru_cache(maxsize=16)
def _block_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    return nnx.split(abstract_model(cfg).blocks)[0]


@functools.partial(jax.jit, static_argnums=0)
def embed_inputs(cfg: ModelConfig, params: PyTree, tokens_BL: Array) -> Array:
    """The residual stream layer 0 reads: token (and absolute position) embeddings."""
    graphdef = nnx.split(abstract_model(cfg))[0]
    blocks = params["blocks"]
    first = blocks[0] if isinstance(blocks, tuple) else jax.tree.map(lambda a: a[0], blocks)
    model = nnx.merge(graphdef, {**params, "blocks": first})
    B, L = tokens_BL.shape
    return model.embed(tokens_BL, default_positions(B, L))


def block_layouts(cfg: ModelConfig, targets: str = BLOCK_LINEARS) -> dict[str, tuple[int, int]]:
    """{path inside a block ("attn/q/w"): (n_in, n_out)} of the block weights `targets` names
    (a regex on full param paths, `llm.model.quantized.weight_layouts`)."""
    return {
        path.removeprefix("blocks/"): layout
        for path, layout in weight_layouts(cfg).items()
        if path.startswith("blocks/") and re.search(targets, path)
    }


def set_path(tree: PyTree, path: str, value: Any) -> dict:
    """A copy of the nested dict `tree` with `path` set to `value` (missing dicts created;
    the input is not modified)."""
    head, _, rest = path.partition("/")
    return {**tree, head: set_path(tree.get(head, {}), rest, value) if rest else value}


def layer_params(params: PyTree, i: int) -> PyTree:
    """Layer i's block tree (no layers axis), from the stacked or per-layer layout."""
    blocks = params["blocks"]
    if isinstance(blocks, tuple):
        return blocks[i]
    return jax.tree.map(lambda a: a[i], blocks)


def set_layer(params: PyTree, i: int, layer: PyTree) -> PyTree:
    """`params` with layer i replaced; a layer whose leaves changed kind (a float weight now a
    QArray) turns the blocks into the per-layer layout (`stack_layers` stacks them again)."""
    blocks = params["blocks"]
    if not isinstance(blocks, tuple):
        if jax.tree.structure(layer) == jax.tree.structure(layer_params(params, 0)):
            return {**params, "blocks": jax.tree.map(lambda a, b: a.at[i].set(b), blocks, layer)}
        blocks = tuple(layer_params(params, j) for j in range(jax.tree.leaves(blocks)[0].shape[0]))
    return {**params, "blocks": (*blocks[:i], layer, *blocks[i + 1 :])}


def stack_layers(params: PyTree) -> PyTree:
    """The stacked layout again from per-layer trees (QArrays stack as pytrees)."""
    blocks = params["blocks"]
    if not isinstance(blocks, tuple):
        return params
    return {**params, "blocks": jax.tree.map(lambda *a: jnp.stack(a), *blocks)}


def _call(cfg: ModelConfig, layer: PyTree, x_BLD: Array, record: bool):
    """(the block's output, the inputs its `Linear`s sowed when `record`, else None)."""
    block = nnx.merge(_block_graphdef(cfg), layer)
    B, L, _ = x_BLD.shape
    args = (x_BLD, default_positions(B, L), jnp.ones((B, L), jnp.int32), None)
    if not record:
        return block(*args).hidden_BLD, None
    for _, node in nnx.iter_graph(block):
        if isinstance(node, Linear):
            node.record = True
    out, sown = nnx.capture(block, nnx.Intermediate)(*args)
    return out.hidden_BLD, sown


@functools.partial(jax.jit, static_argnums=0)
def run_layer(cfg: ModelConfig, layer: PyTree, x_BLD: Array) -> Array:
    """One block's output (causal, default positions, no dropout)."""
    return _call(cfg, layer, x_BLD, record=False)[0]


@functools.partial(jax.jit, static_argnums=0)
def linear_inputs(cfg: ModelConfig, layer: PyTree, x_BLD: Array) -> dict[str, Array]:
    """{weight path in the block ("attn/q/w"): its input as a matrix [M = B*L tokens, K]}."""
    sown = nnx.to_pure_dict(_call(cfg, layer, x_BLD, record=True)[1])
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(sown)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        name = "/".join(keys[: keys.index("inputs")]) + "/w"
        out[name] = value
    return out
