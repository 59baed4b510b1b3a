"""Several adapters on one base model, chosen per request (`llm serve --adapter NAME=DIR`).

    adapters = {"sql": load_adapter("runs/lora_sql", base), "chat": load_adapter("hf_dir", base)}
    bank = AdapterBank(base.params, adapters)
    engine.params = bank.weights("sql")      # the base with that adapter merged
    engine.params = bank.weights(None)       # the base itself

An adapter directory is one of our runs that trained an adapter (`peft.method: lora`; its
trained and frozen adapter leaves are read, never its decoder) or a Hugging Face PEFT LoRA
directory (llm/peft/import_hf.py). Each is checked against the base's shapes when it is
loaded, so a mismatch is an error at start-up naming the directory, not at the first
request.

How a request gets its weights: merged copies, cached. A request runs on W + scale * A @ B
computed once (Hu et al. 2021, arXiv:2106.09685, "no additional inference latency"), not on
x @ W + x @ A @ B per step: decoding then costs exactly what the base costs. The bank keeps
one base in the engine's decode layout (`unstack_layers`) and builds an adapter's weights
by merging only the weights its tree names (the adapter is keyed like the params it
adapts); every other buffer is the base's own, shared, not copied. So a cached adapter
costs the size of its *targeted* matrices (q and v of every layer: a fraction of the
model), and `cache_size` bounds how many stay merged (least recently used first out; 0
merges on every switch). The price of merging is that one step's rows share one set of
weights: the scheduler runs requests of one adapter at a time (llm/inference/scheduler.py);
per-row adapters in one batch (S-LoRA, arXiv:2311.03285) would need the unmerged form in
the model.
"""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from llm.checkpoint import LoadedModel, layout_of, model_config_of
from llm.checkpoint.load import restore_run_adapters
from llm.model import unstack_layers
from llm.peft import ADAPTERS, METHODS
from llm.peft.import_hf import CONFIG as PEFT_CONFIG
from llm.peft.import_hf import import_lora
from llm.peft.lora import NAME as LORA
from llm.typing import PyTree

Components = dict[str, PyTree]  # adapter component name ("lora") -> its whole tree


def load_adapter(path: str | Path, base: LoadedModel) -> Components:
    """The adapter components in directory `path`, checked to fit `base`'s params."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"adapter {p}: no such directory")
    if (p / PEFT_CONFIG).is_file():
        components = {LORA: import_lora(p, base.config.model).adapter}
    elif layout_of(p) == "run":
        _refuse_unservable(p)
        components, _ = restore_run_adapters(p.absolute())
        if not components:
            raise ValueError(
                f"adapter {p} is a training run without an adapter (peft.method none): it is "
                "a whole model; give it as --checkpoint instead"
            )
    else:
        raise ValueError(
            f"adapter {p} is a model directory, not an adapter: give a run trained with "
            f"peft.method (e.g. lora) or a Hugging Face PEFT directory ({PEFT_CONFIG})"
        )
    check_fits(base.params, components, p)
    return components


def _refuse_unservable(run_dir: Path) -> None:
    """Only adapters that merge into full-precision weights can be served this way."""
    method = METHODS.get(model_config_of(run_dir).peft.method)
    if method is None:
        return
    if method.forward is not None:
        why = "changes the forward pass, not the weights: it cannot be merged and served"
    elif method.store is not None:
        why = "was trained on a quantised base: serve the run itself as --checkpoint"
    else:
        return
    raise ValueError(f"adapter {run_dir}: its peft.method={method.component} {why}")


def check_fits(params: PyTree, components: Components, where: Path | str) -> None:
    """Raises ValueError naming `where` unless every component applies to `params`'s
    shapes (traced abstractly: no weight is computed)."""
    for name, tree in sorted(components.items()):
        if name not in ADAPTERS:
            raise ValueError(f"adapter {where}: component {name!r} is not a registered adapter")
        try:
            jax.eval_shape(ADAPTERS[name], params, tree)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"adapter {where} does not fit the base model: {err} (it was trained on "
                "another base; give the --checkpoint it was made for)"
            ) from None


def merged(params: PyTree, components: Components) -> PyTree:
    """`params` (stacked layout) with every component applied: one adapter, one model
    (`llm generate --adapter DIR`)."""
    for name, tree in sorted(components.items()):
        params = ADAPTERS[name](params, tree)
    return params


def merge_into(base: PyTree, components: Components) -> PyTree:
    """`base` (decode layout) with each component applied to the weights its tree names;
    the other buffers are `base`'s own, shared."""
    out = {**base, "blocks": list(base["blocks"])}
    for name, tree in sorted(components.items()):
        touched = {path: _get(out, path) for path in _touched(out, tree)}
        for path, value in _merge_touched(ADAPTERS[name], touched, tree).items():
            _put(out, path, value)
    return {**out, "blocks": tuple(out["blocks"])}


@functools.partial(jax.jit, static_argnums=0)
def _merge_touched(apply, touched: dict, tree: PyTree) -> dict:
    """The touched leaves merged: block leaves come and go as per-layer tuples and are
    stacked only inside this one program, so the stacked copy is transient."""
    stacked = {p: jnp.stack(v) if isinstance(v, tuple) else v for p, v in touched.items()}
    out = _flat(apply(_nest(stacked), tree))
    return {p: tuple(out[p]) if isinstance(v, tuple) else out[p] for p, v in touched.items()}


def _touched(model: dict, tree: PyTree) -> list[str]:
    """The model leaf paths ("blocks/attn/q/w") that some adapter path starts with."""
    layer0 = _flat(model["blocks"][0])
    model_paths = list(_flat({k: v for k, v in model.items() if k != "blocks"}))
    model_paths += [f"blocks/{p}" for p in layer0]
    adapter_paths = list(_flat(tree))
    return [m for m in model_paths if any(a.startswith(m + "/") for a in adapter_paths)]


def _get(model: dict, path: str):
    """A leaf of the decode layout: one array, or a tuple of per-layer arrays for blocks."""
    head, _, rest = path.partition("/")
    if head != "blocks":
        return _flat({k: v for k, v in model.items() if k != "blocks"})[path]
    return tuple(_flat(layer)[rest] for layer in model["blocks"])


def _put(model: dict, path: str, value) -> None:
    """Writes a leaf back into the decode layout (new dicts: the trees it shares with the
    base are never mutated)."""
    head, _, rest = path.partition("/")
    if head != "blocks":
        model.update(_replace(model, path.split("/"), value))
        return
    for i, layer in enumerate(model["blocks"]):
        model["blocks"][i] = _replace(layer, rest.split("/"), value[i])


def _replace(tree: dict, keys: list[str], value) -> dict:
    out = dict(tree)
    out[keys[0]] = value if len(keys) == 1 else _replace(tree[keys[0]], keys[1:], value)
    return out


def _flat(tree: PyTree, prefix: str = "") -> dict[str, jax.Array]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: dict[str, jax.Array]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        *parents, last = path.split("/")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


class AdapterBank:
    """One base in the decode layout and its named adapters, merged on demand (see above)."""

    def __init__(self, params: PyTree, adapters: dict[str, Components], cache_size: int = -1):
        self.base = unstack_layers(params)
        self.adapters = dict(adapters)
        self.cache_size = len(self.adapters) if cache_size < 0 else cache_size
        self._cache: collections.OrderedDict[str, PyTree] = collections.OrderedDict()
        self.merges = 0  # merged copies built so far (each cache miss)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.adapters))

    def weights(self, name: str | None) -> PyTree:
        """The base (None) or the base with adapter `name` merged, in the decode layout."""
        if name is None:
            return self.base
        if name not in self.adapters:
            raise KeyError(f"no adapter {name!r}; loaded: {list(self.names)}")
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        weights = jax.block_until_ready(merge_into(self.base, self.adapters[name]))
        self.merges += 1
        if self.cache_size > 0:
            self._cache[name] = weights
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return weights
