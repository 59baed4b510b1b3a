"""Written principles for constitutional self-critique: each a critique and a revision request.

Constitutional AI (Bai et al. 2022, arXiv:2212.08073, sec. 3.1) writes a constitution as pairs
of requests: a *critique request* ("identify specific ways in which the assistant's last
response is harmful ...") that asks the model to find what is wrong with its own answer
against one principle, and a *revision request* ("please rewrite the assistant response to
remove ...") that asks it to fix exactly that. A principle is drawn at random for each
critique-revision round. `DEFAULT_PRINCIPLES` are the paper's harmlessness pairs (appendix C,
lightly shortened) plus two of ours on honesty and on answering the question asked, which a
small model fails more often than harmlessness.

A user constitution is a YAML or JSON file: a list of `{name, critique, revision}` mappings
(`llm constitutional --principles FILE`, `load_principles`).

    - name: harmful
      critique: Identify specific ways in which the assistant's last response is harmful.
      revision: Please rewrite the assistant response to remove any harmful content.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class Principle:
    """One principle of a constitution: a named critique request and its revision request."""

    name: str
    critique: str  # asks the model to criticise its last response against the principle
    revision: str  # asks the model to rewrite that response to fix what the critique found


def _p(name: str, critique: str, revision: str) -> Principle:
    return Principle(name, critique, revision)


DEFAULT_PRINCIPLES: tuple[Principle, ...] = (
    _p("harmful",
       "Identify specific ways in which the assistant's last response is harmful, unethical, "
       "racist, sexist, toxic, dangerous, or illegal.",
       "Please rewrite the assistant response to remove any and all harmful, unethical, racist, "
       "sexist, toxic, dangerous, or illegal content."),
    _p("harm_to_others",
       "Explain ways in which the assistant's preceding response may be harmful to either the "
       "human or others. For example, if the assistant says anything that encourages dangerous "
       "or illegal activity, make sure to point it out.",
       "Please rewrite the assistant response to remove any and all harmful content, including "
       "anything dangerous, illegal, racist, sexist or socially biased."),
    _p("insensitive",
       "Discuss the assistant's last response to the human and whether it is in any way "
       "insensitive, sexist, racist, or socially inappropriate.",
       "Revise the assistant's last response to remove content that is in any way insensitive, "
       "sexist, racist, or socially inappropriate."),
    _p("age_appropriate",
       "Did the assistant's preceding response include anything that may be inappropriate for "
       "young children? If so, discuss how it can be revised to be more appropriate.",
       "Please rewrite the assistant response to make it more age-appropriate for children."),
    _p("dangerous_advice",
       "Discuss whether the assistant provided any advice that may encourage illegal or "
       "dangerous activity from either the human or others.",
       "Revise the assistant's response so as to refrain from giving illegal or dangerous "
       "advice."),
    _p("empathetic",
       "Please comment on whether the assistant's last response is thoughtful and empathetic. "
       "Does it seem like the kind of thing a sensitive friend or therapist might say? Give "
       "the strongest argument you can for how it could improve.",
       "Please write a new assistant response so that it is more like what a thoughtful, "
       "empathetic, caring, sensitive friend or therapist would say."),
    _p("ethical",
       "Discuss ways in which the assistant's response may be considered controversial or "
       "objectionable based on commonsense ethical and moral standards.",
       "Revise the assistant's response if possible so that it's less controversial and "
       "objectionable based on commonsense ethical and moral standards."),
    _p("honest",
       "Identify anything in the assistant's last response that is false, made up or stated "
       "with more certainty than it deserves.",
       "Please rewrite the assistant response so that every claim in it is true, and say "
       "plainly what is uncertain."),
    _p("on_topic",
       "Does the assistant's last response answer the question the human asked, directly and "
       "without padding? Point out what is missing, off topic or repeated.",
       "Please rewrite the assistant response so that it answers the human's question "
       "directly, completely and briefly."),
)  # fmt: skip


def load_principles(path: str | Path) -> tuple[Principle, ...]:
    """The constitution in a YAML (.yaml/.yml) or JSON file; any flaw raises naming the entry."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such principles file")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {err}"
        ) from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{p}: expected a non-empty list of {{name, critique, revision}}")
    out, seen = [], set()
    for k, entry in enumerate(data):
        where = f"{p}: principle {k}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is a {type(entry).__name__}, not a mapping")
        fields = ("name", "critique", "revision")
        if unknown := sorted(set(entry) - set(fields)):
            raise ValueError(f"{where}: unknown keys {unknown} (expected {list(fields)})")
        for key in fields:
            value = entry.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
        if entry["name"] in seen:
            raise ValueError(f"{where}: name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        out.append(Principle(entry["name"], entry["critique"].strip(), entry["revision"].strip()))
    return tuple(out)
