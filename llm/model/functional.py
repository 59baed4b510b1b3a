"""The pure-functional face of the model: params are a plain nested dict of arrays.

NNX modules define the computation; we cross into pytrees once. `init_params` returns a
plain dict (`nnx.State.to_pure_dict`), and `forward` rebuilds the module from a cached
graph definition (`nnx.merge`) inside whatever transformation calls it, so under `jit`,
`grad` or `scan` the forward is a pure function of (params, inputs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from llm.config import ModelConfig
from llm.model.arch import model_class
from llm.model.cache import Cache
from llm.model.extras import Extras
from llm.model.kv_cache import KVCache, fill_prefix
from llm.model.outputs import ModelOutput
from llm.typing import Array, PyTree


@functools.lru_cache(maxsize=64)
def _abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and shape-only state, built without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: model_class(cfg)(cfg, nnx.Rngs(0))))


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: ModelConfig, key: Array) -> PyTree:
    return nnx.to_pure_dict(nnx.split(model_class(cfg)(cfg, nnx.Rngs(params=key)))[1])


def init_params(cfg: ModelConfig, key: Array) -> PyTree:
    """Freshly initialised parameters as a nested dict of arrays in `cfg.param_dtype`."""
    return _init(cfg, key)


def abstract_params(cfg: ModelConfig) -> PyTree:
    """The params pytree as `jax.ShapeDtypeStruct`s: shapes and dtypes at no memory cost."""
    return nnx.to_pure_dict(_abstract(cfg)[1])


def abstract_model(cfg: ModelConfig) -> nnx.Module:
    """The module with shape-only params: for reading its structure (which layers exist)."""
    return nnx.merge(*_abstract(cfg))


def logical_axes(cfg: ModelConfig) -> PyTree:
    """Params-shaped pytree of `PartitionSpec`s holding logical axis names (not mesh axes)."""
    state = _abstract(cfg)[1]
    specs = jax.tree.map(
        lambda v: PartitionSpec(*v.get_metadata()["out_sharding"]),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.to_pure_dict(specs)


def forward(
    cfg: ModelConfig,
    params: PyTree,
    inputs_BL: Array,
    *,
    positions_BL: Array | None = None,
    segment_ids_BL: Array | None = None,
    dropout_key: Array | None = None,
    return_logits: bool = True,
    return_hidden_states: bool = False,
    input_embeddings_BLD: Array | None = None,
    cache: Cache | None = None,
    extras: Extras | None = None,
    return_attention: bool = False,
    token_types_BL: Array | None = None,
    prefix_BL: Array | None = None,
) -> ModelOutput:
    """Runs the model; `dropout_key=None` is deterministic (evaluation).

    `prefix_BL` (Transformer, required exactly when `model.prefix_lm`): True on prefix
    tokens, attended bidirectionally (llm/model/prefix_lm.py).

    `token_types_BL` (Transformer with `model.type_vocab_size` > 0): BERT's segment ids
    into the token-type table; None = type 0 everywhere.

    `return_attention` (Transformer only): every layer's attention probabilities in
    `out.attention_YBNLS`, from the reference backend (llm/interp reads them).

    `input_embeddings_BLD` replaces the token-embedding lookup (soft prompts, gradient
    probes); `inputs_BL` still fixes the batch shape.

    `cache` (from `llm.model.cache.init_cache`) makes this an incremental step: the
    inputs continue the cached sequences, positions come from the cache lengths, and
    `out.cache` is the updated cache. Positions and dropout must not be given with a cache.

    `extras` (llm/model/extras.py) are the learned inputs of prompt tuning, prefix tuning
    and bottleneck adapters; losses get them through `llm.train.trainable.model_forward`.
    """
    transformer = cfg.arch == "transformer"  # the baselines check their own cache arguments
    if transformer and cache is not None and (positions_BL is not None or dropout_key is not None):
        raise ValueError(
            "forward with a KV cache derives positions from the cache and runs without "
            "dropout: pass neither positions_BL nor dropout_key"
        )
    if transformer and cache is not None and not isinstance(cache, KVCache):
        raise TypeError(
            f"this model decodes with a KVCache (llm.model.cache.init_cache); got a "
            f"{type(cache).__name__}"
        )
    if return_attention and not transformer:
        raise ValueError(f"return_attention: model.arch={cfg.arch!r} has no attention")
    model, layers = _merge(cfg, params)
    attention = {"return_attention": True} if return_attention else {}  # baselines lack it
    if token_types_BL is not None:  # baselines have no token-type table
        if not transformer:
            raise ValueError(f"token_types_BL: model.arch={cfg.arch!r} has no token types")
        attention["token_types_BL"] = token_types_BL
    if prefix_BL is not None or cfg.prefix_lm:  # the Transformer checks it against the config
        if not transformer:
            raise ValueError(f"prefix_BL: model.arch={cfg.arch!r} has no prefix-LM mask")
        attention["prefix_BL"] = prefix_BL
    return model(
        inputs_BL,
        positions_BL=positions_BL,
        segment_ids_BL=segment_ids_BL,
        dropout_key=dropout_key,
        return_logits=return_logits,
        return_hidden_states=return_hidden_states,
        input_embeddings_BLD=input_embeddings_BLD,
        cache=cache,
        layers=layers,
        extras=extras,
        **attention,
    )


def prime_cache(
    cfg: ModelConfig, params: PyTree, cache: KVCache, extras: Extras
) -> tuple[KVCache, Extras]:
    """(an empty cache with prompt or prefix tuning's P virtual entries in slots 0..P-1 of
    every row, the `extras` its decode steps take): how a prompt- or prefix-tuned model
    generates, as Hugging Face PEFT does. The prefix is written as the cached keys and
    values it is (never rotated); the prompt runs through the model as P tokens. Either way
    the real tokens then continue at position P, as in training (llm/model/extras.py), and
    the decode steps carry the adapters alone."""
    decode = Extras(adapters=extras.adapters)
    B = cache.batch
    if extras.prefix_k_YPKH is not None:
        P = extras.prefix_k_YPKH.shape[1]
        k_YBKSH = fill_prefix(cache.k_YBKSH, extras.prefix_k_YPKH)
        v_YBKSH = fill_prefix(cache.v_YBKSH, extras.prefix_v_YPKH)
        return KVCache(k_YBKSH, v_YBKSH, jnp.full((B,), P, jnp.int32)), decode
    if extras.prompt_PD is not None:
        prompt_BPD = jnp.broadcast_to(extras.prompt_PD, (B, *extras.prompt_PD.shape))
        tokens_BP = jnp.zeros(prompt_BPD.shape[:2], jnp.int32)  # fixes the shape only
        out = forward(cfg, params, tokens_BP, input_embeddings_BLD=prompt_BPD, cache=cache,
                      extras=decode, return_logits=False)  # fmt: skip
        return out.cache, decode
    return cache, decode


def unembed(cfg: ModelConfig, params: PyTree, hidden_BLD: Array) -> Array:
    """Logits from final hidden states (the output layer alone), for chunked losses."""
    return _merge(cfg, params)[0].logits(hidden_BLD)


def readout(cfg: ModelConfig, params: PyTree, hidden_BLD: Array) -> Array:
    """Logits read from a residual stream at any depth: the final norm (pre-norm models),
    then the output layer. On the last block's output it equals the forward's logits; on
    an earlier one it is the logit lens (nostalgebraist, 2020)."""
    if cfg.arch != "transformer":
        raise ValueError(f"readout reads a Transformer's residual stream; got arch {cfg.arch!r}")
    model = _merge(cfg, params)[0]
    if model.final_norm is not None:
        hidden_BLD = model.final_norm(hidden_BLD)
    return model.logits(hidden_BLD)


def unstack_layers(params: PyTree) -> PyTree:
    """The decode layout: `params["blocks"]` as a tuple of per-layer trees.

    Stacked block params are sliced per layer inside the compiled program, and XLA:CPU
    copies each slice before its matmuls use it. Training amortises that over thousands of
    tokens; a decode step reads every weight for one token per row, so the copies tripled
    its memory traffic (docs/LOG.md). Slicing once, outside `jit`, leaves each layer's
    weights a separate buffer the matmuls read in place. `forward` and `unembed` accept
    either layout; this one costs a copy of the block weights when it is made.
    """
    blocks = params.get("blocks")
    if blocks is None or isinstance(blocks, tuple):  # no stacked blocks, or already unstacked
        return params
    n_layers = jax.tree.leaves(blocks)[0].shape[0]
    layers = tuple(jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(n_layers))
    return {**params, "blocks": layers}


def _merge(cfg: ModelConfig, params: PyTree) -> tuple[nnx.Module, tuple | None]:
    """The module with `params`, and the per-layer block params if in the decode layout.

    In the decode layout the module is merged with layer 0's tree in place of the stacked
    blocks (merging only assigns values, and one layer has the stacked Block's structure);
    the model then reads every layer from the tuple it is given.
    """
    layers = params["blocks"] if isinstance(params.get("blocks"), tuple) else None
    if layers is not None:
        if len(layers) != cfg.n_layers:
            raise ValueError(f"params hold {len(layers)} layers; the config has {cfg.n_layers}")
        params = {**params, "blocks": layers[0]}
    return nnx.merge(_abstract(cfg)[0], params), layers
