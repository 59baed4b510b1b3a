"""Hugging Face tensor names and layouts <-> our params pytree, streamed one tensor at a time.

Our params keep structure that Hugging Face flattens: q/k/v weights are [layers, D, heads,
head_dim], the output projection [layers, heads, head_dim, D], and every block's tensors are
stacked along a leading layers axis (for `jax.lax.scan`). Llama-family `nn.Linear` weights are
stored (out, in), so they are transposed; GPT-2's `Conv1D` weights are already (in, out) and
its q/k/v live in one fused `c_attn` tensor. Every transform is a transpose, reshape, split
or concatenation: exact, so import -> export -> import reproduces every bit.

Loading reads `model.safetensors` or the shards named by `model.safetensors.index.json`
tensor by tensor with `safe_open` and writes each into a preallocated stacked numpy array,
so peak host memory is our params plus one tensor, never a second whole-model copy.
Unknown tensors are an error; missing ones are listed by their Hugging Face name.
Mixture-of-experts checkpoints store one tensor per expert: "{j}" in a rule's name is the
expert index into our stacked [layers, experts, ...] arrays (llm/interop/hf_moe.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm.config import ModelConfig
from llm.interop.hf_config import FAMILY_READERS, FAMILY_TYPES, FAMILY_WRITERS, hf_model_type
from llm.model import abstract_params

ParamPath = tuple[str, ...]
# Buffers some checkpoints store that are not parameters (recomputed by the model).
NON_PARAMS = (r"\.rotary_emb\.inv_freq$", r"\.attn\.bias$", r"\.attn\.masked_bias$")
# BERT: the position-id buffer, and the [CLS] pooler that our encoder does not compute
NON_PARAMS += (r"^embeddings\.position_ids$", r"^pooler\.dense\.(weight|bias)$")
# T5: per-stack copies of `shared.weight` older savers write (T5 ties them), and a
# cross-attention position table that T5 never reads (transformers skips it as well)
NON_PARAMS += (
    r"^(en|de)coder\.embed_tokens\.weight$",
    r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
)


@dataclass(frozen=True)
class Rule:
    """One Hugging Face tensor <-> one or more of our tensors.

    `hf` is the name ("{i}" = layer index); `ours` the param paths it fills; `load` maps the
    HF array to one array per path (a block tensor without its layers axis); `save` inverts.
    """

    hf: str
    ours: tuple[ParamPath, ...]
    load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    save: Callable[..., np.ndarray]


def _one(path: ParamPath, hf: str, load, save) -> Rule:
    return Rule(hf, (path,), lambda w: (load(w),), save)


def _ident(path: ParamPath, hf: str) -> Rule:
    return _one(path, hf, lambda w: w, lambda x: x)


def _transposed(path: ParamPath, hf: str) -> Rule:
    return _one(path, hf, lambda w: w.T, lambda x: x.T)


def llama_rules(cfg: ModelConfig) -> list[Rule]:
    """Llama, Mistral, Qwen2, Qwen3: `model.layers.{i}.*`, nn.Linear weights (out, in)."""
    D, N, K, H = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
    a, m = "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
    rules = [
        _ident(("token_embed",), "model.embed_tokens.weight"),
        _ident(("final_norm", "scale"), "model.norm.weight"),
        _ident(("blocks", "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight"),
        _ident(("blocks", "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight"),
        _one(
            ("blocks", "attn", "o", "w"),
            a + "o_proj.weight",
            lambda w: w.T.reshape(N, H, D),
            lambda x: x.reshape(N * H, D).T,
        ),
    ]
    for name, heads in (("q", N), ("k", K), ("v", K)):
        rules.append(
            _one(
                ("blocks", "attn", name, "w"),
                a + f"{name}_proj.weight",
                lambda w, n=heads: w.T.reshape(D, n, H),
                lambda x, n=heads: x.reshape(D, n * H).T,
            )
        )
        if cfg.qkv_bias:
            rules.append(
                _one(
                    ("blocks", "attn", name, "b"),
                    a + f"{name}_proj.bias",
                    lambda w, n=heads: w.reshape(n, H),
                    lambda x, n=heads: x.reshape(n * H),
                )
            )
    if cfg.out_bias:
        rules.append(_ident(("blocks", "attn", "o", "b"), a + "o_proj.bias"))
    if cfg.qk_norm:
        rules.append(_ident(("blocks", "attn", "q_norm", "scale"), a + "q_norm.weight"))
        rules.append(_ident(("blocks", "attn", "k_norm", "scale"), a + "k_norm.weight"))
    for name in ("gate", "up", "down"):
        rules.append(_transposed(("blocks", "mlp", name, "w"), m + f"{name}_proj.weight"))
        if cfg.mlp_bias:
            rules.append(_ident(("blocks", "mlp", name, "b"), m + f"{name}_proj.bias"))
    if not cfg.tie_embeddings:
        rules.append(_transposed(("lm_head",), "lm_head.weight"))
    return rules


def gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    """GPT-2: `transformer.h.{i}.*`, Conv1D weights (in, out), q/k/v fused in c_attn."""
    D, N, H = cfg.d_model, cfg.n_heads, cfg.head_size
    h = "transformer.h.{i}."
    qkv_w = tuple(("blocks", "attn", n, "w") for n in "qkv")
    qkv_b = tuple(("blocks", "attn", n, "b") for n in "qkv")
    rules = [
        _ident(("token_embed",), "transformer.wte.weight"),
        _ident(("pos_embed",), "transformer.wpe.weight"),
        _ident(("final_norm", "scale"), "transformer.ln_f.weight"),
        _ident(("final_norm", "bias"), "transformer.ln_f.bias"),
        Rule(
            h + "attn.c_attn.weight",
            qkv_w,
            lambda w: tuple(p.reshape(D, N, H) for p in np.split(w, 3, axis=1)),
            lambda *xs: np.concatenate([x.reshape(D, N * H) for x in xs], axis=1),
        ),
        Rule(
            h + "attn.c_attn.bias",
            qkv_b,
            lambda w: tuple(p.reshape(N, H) for p in np.split(w, 3)),
            lambda *xs: np.concatenate([x.reshape(N * H) for x in xs]),
        ),
        _one(
            ("blocks", "attn", "o", "w"),
            h + "attn.c_proj.weight",
            lambda w: w.reshape(N, H, D),
            lambda x: x.reshape(N * H, D),
        ),
        _ident(("blocks", "attn", "o", "b"), h + "attn.c_proj.bias"),
        _ident(("blocks", "mlp", "up", "w"), h + "mlp.c_fc.weight"),
        _ident(("blocks", "mlp", "up", "b"), h + "mlp.c_fc.bias"),
        _ident(("blocks", "mlp", "down", "w"), h + "mlp.c_proj.weight"),
        _ident(("blocks", "mlp", "down", "b"), h + "mlp.c_proj.bias"),
    ]
    for ours, hf in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        rules.append(_ident(("blocks", ours, "scale"), h + f"{hf}.weight"))
        rules.append(_ident(("blocks", ours, "bias"), h + f"{hf}.bias"))
    if not cfg.tie_embeddings:
        rules.append(_transposed(("lm_head",), "lm_head.weight"))
    return rules


# model_type (as hf_model_type names it) -> rules, registered by llm/interop/hf_<family>.py
# (see FAMILY_READERS in hf_config.py): loading and export then go through the same rules.
FAMILY_RULES: dict[str, Callable[[ModelConfig], list[Rule]]] = {}


def register_family(
    model_types: tuple[str, ...],
    *,
    read: Callable[..., ModelConfig],
    type_of: Callable[[ModelConfig], str | None],
    write: Callable[[ModelConfig], dict],
    rules: Callable[[ModelConfig], list[Rule]],
) -> None:
    """Registers a family kept in its own module (llm/interop/hf_<family>.py) for import and
    export: `read(hf, source=, param_dtype=)` of its config.json, `type_of(cfg)` (the
    model_type that computes a config, or None), `write(cfg)` its config.json, `rules(cfg)`."""
    for model_type in model_types:
        FAMILY_READERS[model_type] = read
        FAMILY_WRITERS[model_type] = write
        FAMILY_RULES[model_type] = rules
    FAMILY_TYPES.append(type_of)


def rules_for(cfg: ModelConfig) -> list[Rule]:
    model_type = hf_model_type(cfg)
    if model_type in FAMILY_RULES:
        return FAMILY_RULES[model_type](cfg)
    return gpt2_rules(cfg) if model_type == "gpt2" else llama_rules(cfg)


def _compile(rules: list[Rule]) -> list[tuple[re.Pattern, Rule]]:
    def pattern(hf: str) -> str:  # "{i}" a layer, "{j}" an expert (blocks/mlp/*: [Y, E, ...])
        return re.escape(hf).replace(r"\{i\}", r"(\d+)").replace(r"\{j\}", r"(\d+)") + "$"

    return [(re.compile(pattern(r.hf)), r) for r in rules]


def _indices(rule: Rule, cfg: ModelConfig, spec) -> list[tuple[int, ...]]:
    """Where a rule's tensors go in our stacked arrays: (), (layer,) or (layer, expert)."""
    if "{i}" not in rule.hf:
        return [()]
    if "{j}" not in rule.hf:  # the stacked array's own layer count (T5: encoder or decoder)
        return [(i,) for i in range(spec.shape[0])]
    return [(i, j) for i in range(spec.shape[0]) for j in range(spec.shape[1])]


def _name(rule: Rule, at: tuple[int, ...]) -> str:
    name = rule.hf
    for key, index in zip(("{i}", "{j}")[: len(at)], at, strict=True):
        name = name.replace(key, str(index))
    return name


def safetensors_files(hf_dir: Path) -> list[Path]:
    """The checkpoint's files: the sharded index's, or the single model.safetensors."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [hf_dir / name for name in sorted(set(weight_map.values()))]
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"{hf_dir}: no model.safetensors or model.safetensors.index.json "
        "(PyTorch .bin checkpoints are not read: convert them to safetensors first)"
    )


def iter_safetensors(hf_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor, one at a time."""
    from safetensors import safe_open

    for file in safetensors_files(hf_dir):
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class ParamsBuilder:
    """Fills our params from (HF name, array) pairs and checks nothing is missing or extra."""

    def __init__(self, cfg: ModelConfig, rules: list[Rule], abstract: dict):
        self.cfg, self.rules = cfg, _compile(rules)
        self.abstract, self.arrays, self.filled = abstract, {}, set()
        self.ignored: list[str] = []

    def add(self, name: str, w: np.ndarray) -> None:
        for pattern, rule in self.rules:
            if match := pattern.match(name):
                at = tuple(int(g) for g in match.groups())
                for path, value in zip(rule.ours, rule.load(w), strict=True):
                    self._put(name, path, at, value)
                return
        if any(re.search(p, name) for p in NON_PARAMS):
            self.ignored.append(name)
            return
        raise ValueError(f"tensor {name!r} has no place in our {self._arch()} model")

    def _put(self, name: str, path: ParamPath, at: tuple[int, ...], value: np.ndarray) -> None:
        spec = _get(self.abstract, path)
        shape = spec.shape[len(at) :]
        if at and not at[0] < spec.shape[0]:
            raise ValueError(f"tensor {name!r}: layer {at[0]} >= the {spec.shape[0]} layers of "
                             f"{'/'.join(path)}")  # fmt: skip
        if len(at) == 2 and not at[1] < spec.shape[1]:
            raise ValueError(f"tensor {name!r}: expert {at[1]} >= n_experts={spec.shape[1]}")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r}: shape {value.shape} maps to {path}, needs {shape}")
        if path not in self.arrays:
            self.arrays[path] = np.empty(spec.shape, spec.dtype)
        key = (path, at)
        if key in self.filled:
            raise ValueError(f"tensor {name!r} appears twice")
        self.filled.add(key)
        self.arrays[path][at] = value.astype(spec.dtype)

    def build(self) -> dict:
        missing = []
        for _, rule in self.rules:
            for at in _indices(rule, self.cfg, _get(self.abstract, rule.ours[0])):
                if any((p, at) not in self.filled for p in rule.ours):
                    missing.append(_name(rule, at))
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"{len(missing)} tensor(s) missing from the checkpoint: {shown}")
        params: dict = {}
        for path, array in self.arrays.items():
            _set(params, path, array)
        return params

    def _arch(self) -> str:
        return hf_model_type(self.cfg)


def load_hf_params(cfg: ModelConfig, hf_dir: str | Path) -> tuple[dict, list[str]]:
    """Our params (numpy, `cfg.param_dtype`) from a Hugging Face safetensors checkpoint,
    and the names of the stored tensors that were not needed (buffers, a tied lm_head)."""
    builder = ParamsBuilder(cfg, rules_for(cfg), abstract_params(cfg))
    for name, w in iter_safetensors(Path(hf_dir)):
        if name == "lm_head.weight" and cfg.tie_embeddings:
            builder.ignored.append(name)  # tied: a copy of the embedding some savers write
            continue
        builder.add(name, w)
    return builder.build(), builder.ignored


def hf_tensors(cfg: ModelConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(Hugging Face name, array) for every tensor of our params, one at a time."""
    for rule in rules_for(cfg):
        stacked = [np.asarray(_get(params, p)) for p in rule.ours]
        for at in _indices(rule, cfg, stacked[0]):
            yield _name(rule, at), np.ascontiguousarray(rule.save(*(x[at] for x in stacked)))


def _get(tree: dict, path: ParamPath):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: ParamPath, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
