"""Loading, validating, overriding and saving frozen dataclass configs.

Configs are plain frozen stdlib dataclasses: readable, hashable (so they can be jit static
arguments) and free of any library base class. Parsing from untyped data (YAML files, dotted
command-line overrides) goes through pydantic v2: `TypeAdapter(Config).validate_json(...,
strict=True)` type-checks every field of every nested dataclass in one pass, rejects unknown
keys (`extra="forbid"`), rejects `true` for an int or `8.0` for an int, and reports the full
path of each bad value. We chose pydantic over hand-written checks because it is the most
widely used and maintained validation library for Python and it understands stdlib
dataclasses, `Literal` enums, tuples and optionals without changing how configs are written.
What pydantic does not do, we add here: the closest valid name is suggested for unknown keys
and enum values, and the resolved config is dumped to YAML and read back identically.

Cross-field checks (d_model divisible by n_heads, ...) live in each dataclass's
`__post_init__` and raise `ConfigError` through `check()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml

T = TypeVar("T")

# Every config dataclass sets this: unknown keys are an error, never silently ignored, and
# no float field takes YAML's .inf or .nan (optim.lr=.inf would train to NaN at step 1).
STRICT = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


class ConfigError(ValueError):
    """A config value is missing, of the wrong type, unknown or inconsistent."""


def check(condition: bool, key: str, message: str) -> None:
    """Raises ConfigError("key: message") unless `condition`; used in `__post_init__`."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def config_class(cls: type[T]) -> type[T]:
    """Makes `cls` a frozen, strictly-parsed config dataclass."""
    cls.__pydantic_config__ = STRICT  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True)(cls)


# YAML 1.1 reads `1e-3` (no dot) as a string; configs mean a float.
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.\d*|\d*\.\d+|\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parses one command-line override value as YAML (`4`, `true`, `[1, 2]`, `1e-3`)."""
    return yaml.load(text, Loader=_Loader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.load(path.read_text(), Loader=_Loader) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of `data` with `a.b.c=value` overrides applied (value parsed as YAML)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return data


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Builds `cls` from plain data, raising one ConfigError that lists every problem."""
    try:
        return pydantic.TypeAdapter(cls).validate_json(json.dumps(data), strict=True)
    except pydantic.ValidationError as err:
        lines = [_describe(cls, e) for e in err.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None
    except ConfigError as err:  # raised by __post_init__ outside pydantic's wrapping
        raise ConfigError(f"invalid {source}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config (tuples become lists), as written to YAML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def dump(config: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML; `from_dict(type, load_yaml(path))` reads it back."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# keys that moved to another section: "old.key" -> "new.key", named in the unknown-key error
MOVED_KEYS: dict[str, str] = {}


def _describe(cls: type, error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    shown = _without_tags(cls, loc)
    if kind == "unexpected_keyword_argument":
        dotted = ".".join(shown)
        if dotted in MOVED_KEYS:
            return f"{dotted}: unknown key; it moved to {MOVED_KEYS[dotted]}"
        names = [f.name for f in dataclasses.fields(_type_at(cls, loc[:-1]))]
        return f"{dotted}: unknown key{_suggest(loc[-1], names)}"
    loc = shown
    if kind == "union_tag_invalid":  # a tagged union section (`loss:`) with an unknown name
        tags = re.findall(r"'([^']+)'", error["ctx"]["expected_tags"])
        return f"{'.'.join([*loc, 'name'])}: {error['ctx']['tag']!r} is not one of {tags}" + (
            _suggest(str(error["ctx"]["tag"]), tags)
        )
    if kind == "literal_error":
        options = [str(o) for o in typing.get_args(_type_at(cls, loc))]
        return f"{'.'.join(loc)}: {error['input']!r} is not one of {options}" + _suggest(
            str(error["input"]), options
        )
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        key, sep, rest = message.partition(": ")
        if sep and re.fullmatch(r"[\w.]+", key):
            return f"{'.'.join([*loc, key])}: {rest}"
        return f"{'.'.join(loc)}: {message}"
    got = error.get("input")
    return f"{'.'.join(loc) or '<root>'}: {error['msg']} (got {got!r})"


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_at(cls: Any, loc: list[str]) -> Any:
    """The annotated type found by following field names `loc` from dataclass `cls`."""
    tp = cls
    for name in loc:
        tp = _unwrap_optional(tp)
        members = _tagged_members(tp)
        if members:  # pydantic puts the tag of a tagged union's member in the location
            tp = members[name]
            continue
        hints = typing.get_type_hints(tp, include_extras=True)
        tp = hints[name]
    return _unwrap_optional(tp)


def _tagged_members(tp: Any) -> dict[str, Any]:
    """{tag: member} of an `Annotated[A | B, Field(discriminator="name")]` type, else {}."""
    if typing.get_origin(tp) is not typing.Annotated:
        return {}
    inner = typing.get_args(tp)[0]
    members = (
        typing.get_args(inner)
        if typing.get_origin(inner) in (typing.Union, types.UnionType)
        else (inner,)
    )
    members = [typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m
               for m in members]  # fmt: skip
    return {typing.get_args(typing.get_type_hints(m)["name"])[0]: m for m in members}


def _without_tags(cls: Any, loc: list[str]) -> list[str]:
    """`loc` without the member tags pydantic inserts after a tagged union's field name."""
    shown, tp = [], cls
    for name in loc:
        tp = _unwrap_optional(tp)
        members = _tagged_members(tp)
        if members and name in members:
            tp = members[name]
            continue
        shown.append(name)
        hints = (
            typing.get_type_hints(tp, include_extras=True) if dataclasses.is_dataclass(tp) else {}
        )
        tp = hints.get(name)
    return shown


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


__all__ = [
    "ConfigError",
    "Literal",
    "apply_overrides",
    "check",
    "config_class",
    "dump",
    "from_dict",
    "load_yaml",
    "parse_value",
    "to_dict",
]
