"""The pure-functional face of the model: params are a plain nested dict of arrays.

NNX modules define the computation; we cross into pytrees once. `init_params` returns a
plain dict (`nnx.State.to_pure_dict`), and `forward` rebuilds the module from a cached
graph definition (`nnx.merge`) inside whatever transformation calls it, so under `jit`,
`grad` or `scan` the forward is a pure function of (params, inputs).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jax.sharding import PartitionSpec

from llm.config import ModelConfig
from llm.model.kv_cache import KVCache
from llm.model.transformer import ModelOutput, Transformer
from llm.typing import Array, PyTree


@functools.lru_cache(maxsize=64)
def _abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and shape-only state, built without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: ModelConfig, key: Array) -> PyTree:
    return nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(params=key)))[1])


def init_params(cfg: ModelConfig, key: Array) -> PyTree:
    """Freshly initialised parameters as a nested dict of arrays in `cfg.param_dtype`."""
    return _init(cfg, key)


def abstract_params(cfg: ModelConfig) -> PyTree:
    """The params pytree as `jax.ShapeDtypeStruct`s: shapes and dtypes at no memory cost."""
    return nnx.to_pure_dict(_abstract(cfg)[1])


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
    cache: KVCache | None = None,
) -> ModelOutput:
    """Runs the model; `dropout_key=None` is deterministic (evaluation).

    `input_embeddings_BLD` replaces the token-embedding lookup (soft prompts, gradient
    probes); `inputs_BL` still fixes the batch shape.

    `cache` (a `KVCache`, see `llm/model/kv_cache.py`) makes this an incremental step: the
    inputs continue the cached sequences, positions come from the cache lengths, and
    `out.cache` is the updated cache. Positions, dropout and input embeddings must not be
    given with a cache.
    """
    if cache is not None and (
        positions_BL is not None or dropout_key is not None or input_embeddings_BLD is not None
    ):
        raise ValueError(
            "forward with a KV cache derives positions from the cache and runs without "
            "dropout: pass neither positions_BL, dropout_key nor input_embeddings_BLD"
        )
    model = nnx.merge(_abstract(cfg)[0], params)
    return model(
        inputs_BL,
        positions_BL=positions_BL,
        segment_ids_BL=segment_ids_BL,
        dropout_key=dropout_key,
        return_logits=return_logits,
        return_hidden_states=return_hidden_states,
        input_embeddings_BLD=input_embeddings_BLD,
        cache=cache,
    )


def unembed(cfg: ModelConfig, params: PyTree, hidden_BLD: Array) -> Array:
    """Logits from final hidden states (the output layer alone), for chunked losses."""
    return nnx.merge(_abstract(cfg)[0], params).logits(hidden_BLD)
