"""One way to load a model: `load_model(path, step=None)` for every layout on disk.

    model = load_model("runs/default")            # a training run: newest good checkpoint
    model = load_model("runs/default", step=800)  # ... or a chosen one
    model = load_model("models/smollm2")          # `llm convert` output (params/ + config)
    model = load_model("hf/SmolLM2-135M")         # a Hugging Face directory (config.json)
    model.config, model.params, model.tokenizer, model.step

Layouts (`layout_of` tells them apart and names what it found when none fits):
  run       config.yaml + checkpoints/<step>/state  (llm.checkpoint.manager)
  imported  config.yaml + params/                   (llm.interop.model_dir.save_model); with
            quantization.json a quantized model, whose QArray leaves are restored as such
  hf        config.json + *.safetensors             (read through llm.interop, no import step)

Only the decoder's params are read. A run checkpoint also holds optimiser moments (twice the
params for AdamW) and any frozen extras; they are never built or read here: orbax restores
the `params.model` and `frozen.model` subtrees alone (`partial_restore`), and the two are
merged back into the decoder's tree. Every array's shape and dtype is checked against the
model config before reading, and a mismatch names the path and the directory. A run's step is
verified against its checksums first; a corrupt one is passed over for the next older step.

`shardings` (a params-shaped tree of NamedShardings) restores each array straight into its
shards, which is how a warm start (`train.init_from`) places a model on a mesh.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import PartitionSpec

from llm.checkpoint.integrity import verify
from llm.checkpoint.manager import (
    CHECKPOINTS,
    STATE,
    CheckpointMismatch,
    check_compatible,
    path_name,
)
from llm.compress import sparsity  # noqa: F401 (registers the pruning "mask" component)
from llm.config import Config, load_config
from llm.model import abstract_params, logical_axes, quantized
from llm.peft import ADAPTERS, METHODS, stored_decoder
from llm.tokenizers import load_tokenizer
from llm.typing import PyTree

MODEL = "model"  # the decoder's component in a run's params / frozen trees (llm.train)
MODEL_ADVICE = "(config.yaml beside it describes another model than was saved)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclasses.dataclass
class LoadedModel:
    """A model ready for evaluation, generation, export or a warm start."""

    config: Config
    params: PyTree  # the decoder's full param tree
    tokenizer: Any
    step: int  # the checkpoint's step; 0 for imported and Hugging Face directories
    layout: str  # "run" | "imported" | "hf"
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def layout_of(path: str | Path) -> str:
    """Which layout `path` holds, or FileNotFoundError saying what is there instead."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such directory")
    if (p / "config.yaml").is_file() and (p / "params").is_dir():
        return "imported"
    if (p / "config.yaml").is_file() and (p / CHECKPOINTS).is_dir():
        return "run"
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return "hf"
    found = ", ".join(sorted(c.name for c in p.iterdir())[:8]) or "nothing"
    raise FileNotFoundError(
        f"{p} is not a model directory: expected config.yaml with checkpoints/ (a run) or "
        f"params/ (llm convert), or config.json with *.safetensors (Hugging Face); found {found}"
    )


def load_model(path: str | Path, step: int | None = None, shardings: PyTree = None) -> LoadedModel:
    """(config, params, tokenizer, step) of any model directory; see the module docstring."""
    p = Path(path).absolute()
    layout = layout_of(p)
    if step is not None and layout != "run":
        raise ValueError(f"a step was given but {p} is an {layout} model with no steps")
    cfg = model_config_of(p)
    if layout == "hf":
        params, found = _load_hf_params(p, cfg, shardings), 0
    elif layout == "imported":
        params, found = _restore_imported(p, cfg, shardings), 0
    else:
        params, found = restore_run_params(p, cfg, step, shardings)
    return LoadedModel(cfg, params, tokenizer_with_template(cfg.data.tokenizer), found, layout, p)


def quantization_of(path: str | Path) -> dict[str, dict[str, Any]]:
    """The quantization manifest of a model directory ({} for a float model)."""
    f = Path(path) / quantized.MANIFEST
    return json.loads(f.read_text()) if f.is_file() else {}


def _restore_imported(path: Path, cfg: Config, shardings: PyTree) -> PyTree:
    """An imported directory's params; a quantized one's QArrays rebuilt from its manifest
    (`shardings`, if given, must then be shaped like the quantized tree)."""
    spec = quantization_of(path)
    if not spec:
        return _restore(path / "params", abstract_params(cfg.model), shardings)
    try:
        abstract = quantized.abstract_quantized(abstract_params(cfg.model), spec)
    except ValueError as err:
        raise CheckpointMismatch(f"{path / quantized.MANIFEST}: {err} {MODEL_ADVICE}") from None
    if shardings is not None:
        shardings = quantized.storable(shardings)
    tree = _restore(path / "params", quantized.storable(abstract), shardings)
    return quantized.from_storable(tree, spec)


def model_config_of(path: str | Path) -> Config:
    """The config a model directory describes (its tokenizer path made local), no weights read."""
    p = Path(path).absolute()
    if layout_of(p) == "hf":
        return _hf_config(p)
    return _with_local_tokenizer(load_config(p / "config.yaml"), p)


def _with_local_tokenizer(cfg: Config, path: Path) -> Config:
    """An imported directory names its own tokenizer file; it may have moved since."""
    for name in TOKENIZER_FILES:
        if (path / name).is_file() and not (path / CHECKPOINTS).is_dir():
            data = dataclasses.replace(cfg.data, tokenizer=str(path / name))
            return dataclasses.replace(cfg, data=data)
    return cfg


def tokenizer_with_template(spec: str) -> Any:
    """`load_tokenizer(spec)`, with the chat template of the model the tokenizer file came
    from (its directory's tokenizer_config.json): SmolLM2's ChatML, not our default."""
    tokenizer = load_tokenizer(spec)
    home = Path(spec).parent
    config = home / "tokenizer_config.json"
    if (
        Path(spec).is_file()
        and config.is_file()
        and "chat_template" in json.loads(config.read_text())
    ):
        from llm.interop.chat_template import ChatTemplate  # optional: jinja2

        tokenizer.chat_template = ChatTemplate.from_dir(home)
    return tokenizer


def _hf_config(path: Path) -> Config:
    from llm.interop.hf_config import model_config_from_hf  # optional: safetensors
    from llm.interop.model_dir import make_config

    source = path / "config.json"
    model = model_config_from_hf(json.loads(source.read_text()), source=str(source))
    tok = next((path / n for n in TOKENIZER_FILES if (path / n).is_file()), None)
    if tok is None:
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model")
    return make_config(model, tok)


def _load_hf_params(path: Path, cfg: Config, shardings: PyTree) -> PyTree:
    from llm.interop.hf_weights import load_hf_params  # optional: safetensors

    params, _ = load_hf_params(cfg.model, path)
    return params if shardings is None else jax.device_put(params, shardings)


def run_steps(run_dir: Path) -> list[int]:
    """Committed checkpoint steps of a run (orbax renames a step directory once complete)."""
    root = run_dir / CHECKPOINTS
    return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit() and (d / STATE).is_dir())


def restore_run_params(
    run_dir: Path, cfg: Config, step: int | None = None, shardings: PyTree = None
) -> tuple[PyTree, int]:
    """(decoder params, step) of a run's newest readable (or the given) checkpoint."""
    _refuse_unmergeable(run_dir, cfg)
    steps = run_steps(run_dir)
    if step is not None:
        if step not in steps:
            where = run_dir / CHECKPOINTS
            raise FileNotFoundError(f"no checkpoint for step {step} in {where}: {steps}")
        steps = [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {run_dir / CHECKPOINTS}")
    expected = abstract_params(cfg.model)
    stored = stored_decoder(cfg.peft, expected, logical_axes(cfg.model))[0]
    direct = stored is expected  # else a QLoRA base: read quantised, placed once dequantised
    errors = []
    for s in reversed(steps):
        state_dir = run_dir / CHECKPOINTS / str(s) / STATE
        try:
            verify(state_dir.parent)  # checksums (llm/checkpoint/integrity.py)
            model = _restore_model_subtrees(state_dir, stored, shardings if direct else None)
            if not direct and shardings is not None:
                model = jax.device_put(model, shardings)
            return model, s
        except CheckpointMismatch:
            raise
        except Exception as err:  # unreadable: report and fall back to an older one
            errors.append(f"{state_dir.parent} is unreadable ({err!r:.300})")
            print(f"warning: {errors[-1]}; trying an older one", file=sys.stderr)
    raise FileNotFoundError("no checkpoint could be read:\n  " + "\n  ".join(errors))


def _refuse_unmergeable(run_dir: Path, cfg: Config) -> None:
    """A prompt / prefix / adapter run changes the forward pass, not the weights: its
    decoder alone would silently be the base model, so loading one is an error."""
    method = METHODS.get(cfg.peft.method)
    if method is not None and method.forward is not None:
        raise ValueError(
            f"{run_dir} was trained with peft.method={cfg.peft.method}, which changes the "
            "forward pass (llm.model.extras) and cannot be merged into the decoder's weights; "
            "load_model would return the untuned base model. Evaluate it with the run's loss "
            f"(state.params / state.frozen hold the {method.component!r} component)"
        )


def _restore_model_subtrees(state_dir: Path, expected: PyTree, shardings: PyTree) -> PyTree:
    """The decoder's leaves from `params.model` and `frozen.model` (or legacy `params`), with
    every adapter the run trained (`llm.peft.ADAPTERS`: a LoRA run) merged into them."""
    tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
    if "frozen" in tree:
        params, frozen = tree["params"], tree["frozen"]
        roots = {("params", MODEL): params.get(MODEL, {}), ("frozen", MODEL): frozen.get(MODEL, {})}
    else:  # checkpoints written before the trainable/frozen split
        params, frozen, roots = {}, {}, {("params",): tree["params"]}
    item, args, found, where = {}, {}, {}, {}
    flat = jax.tree_util.tree_flatten_with_path(expected)[0]
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # no mesh: the default device
    flat_sh = jax.tree.leaves(shardings) if shardings is not None else [one] * len(flat)
    for (path, leaf), sharding in zip(flat, flat_sh, strict=True):
        keys = [str(getattr(k, "key", k)) for k in path]
        for root, sub in roots.items():
            meta = _get(sub, keys)
            if meta is not None:
                name = path_name(path)
                found[name], where[name] = (tuple(meta.shape), str(meta.dtype)), [*root, *keys]
                _want(item, args, where[name], leaf.shape, leaf.dtype, sharding)
                break
    check_compatible(expected, found, state_dir, MODEL_ADVICE)
    adapters = sorted(n for n in ADAPTERS if n in params or n in frozen)
    replicated = _replicated(flat_sh[0]) if flat_sh else one
    for name in adapters:  # whole subtrees, replicated: small next to the decoder
        for root, sub in (("params", params.get(name, {})), ("frozen", frozen.get(name, {}))):
            for path, meta in jax.tree_util.tree_flatten_with_path(sub)[0]:
                keys = [root, name, *(str(getattr(k, "key", k)) for k in path)]
                _want(item, args, keys, tuple(meta.shape), meta.dtype, replicated)
    restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=restore)
    model = jax.tree_util.tree_map_with_path(
        lambda path, _: _get(restored, where[path_name(path)]), expected
    )
    for name in adapters:
        adapter = _union(restored.get("params", {}).get(name, {}),
                         restored.get("frozen", {}).get(name, {}))  # fmt: skip
        model = ADAPTERS[name](model, adapter)
    return model


def restore_run_adapters(run_dir: Path, step: int | None = None) -> tuple[dict[str, PyTree], int]:
    """({component: adapter tree}, step) of the adapters (`llm.peft.ADAPTERS`) a run trained,
    each its trained and frozen parts joined, from its newest (or the given) verified step;
    no decoder weight is read. `{}` for a run without one. For serving several adapters on
    one base (llm/inference/adapters.py)."""
    steps = run_steps(run_dir)
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {run_dir / CHECKPOINTS}")
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {run_dir / CHECKPOINTS}")
    found = steps[-1] if step is None else step
    state_dir = run_dir / CHECKPOINTS / str(found) / STATE
    verify(state_dir.parent)
    tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
    params, frozen = tree.get("params", {}), tree.get("frozen", {})
    names = sorted(n for n in ADAPTERS if n in params or n in frozen)
    if not names:
        return {}, found
    item, args = {}, {}
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for name in names:
        for root, sub in (("params", params.get(name, {})), ("frozen", frozen.get(name, {}))):
            for path, meta in jax.tree_util.tree_flatten_with_path(sub)[0]:
                keys = [root, name, *(str(getattr(k, "key", k)) for k in path)]
                _want(item, args, keys, tuple(meta.shape), meta.dtype, one)
    restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=restore)
    parts = restored.get("params", {}), restored.get("frozen", {})
    return {n: _union(parts[0].get(n, {}), parts[1].get(n, {})) for n in names}, found


def _want(item: dict, args: dict, keys: list[str], shape, dtype, sharding) -> None:
    """Asks the partial restore for one array at `keys`, placed by `sharding`."""
    _set(item, keys, jax.ShapeDtypeStruct(shape, dtype, sharding=sharding))
    _set(args, keys, ocp.ArrayRestoreArgs(sharding=sharding, dtype=dtype))


def _replicated(sharding: Any) -> Any:
    mesh = getattr(sharding, "mesh", None)
    return sharding if mesh is None else jax.sharding.NamedSharding(mesh, PartitionSpec())


def _union(a: dict, b: dict) -> dict:
    """Two nested dicts with disjoint leaves as one (an adapter's trained and frozen parts)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _union(out[key], value) if key in out else value
    return out


def _restore(path: Path, abstract: PyTree, shardings: PyTree) -> PyTree:
    if shardings is not None:
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
    meta = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    flat = jax.tree_util.tree_flatten_with_path(meta)[0]
    found = {path_name(p): (tuple(m.shape), str(m.dtype)) for p, m in flat}
    check_compatible(abstract, found, path, MODEL_ADVICE)
    return ocp.StandardCheckpointer().restore(path, abstract)


def _get(tree: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _set(tree: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value
