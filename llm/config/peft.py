"""The `peft:` section: parameter-efficient fine-tuning of a frozen decoder (docs/peft.md).

    peft:
      method: lora             # "none" (default) trains what `train.freeze` leaves trainable
      rank: 8
      alpha: 16.0
      target: ["blocks/attn/(q|v)/w"]

With `method: lora` the whole decoder is frozen and only the adapter is trained
(`llm.peft.trainable_from_config`).
"""

from __future__ import annotations

import re
from typing import Literal

from llm.config.base import check, config_class

# each name other than "none" is a `Method` registered in llm/peft/__init__.py (a test checks)
PeftMethod = Literal[
    "none", "lora", "dora", "qlora", "adalora", "ia3", "prompt", "prefix", "adapter"
]


@config_class
class PeftConfig:
    """LoRA (Hu et al. 2021, arXiv:2106.09685): W + scale * A @ B on the targeted matrices."""

    method: PeftMethod = "none"  # "lora" trains an adapter and freezes the whole decoder
    rank: int = 8  # r, the inner dimension of A [in, r] and B [r, out]
    alpha: float = 16.0  # scale = alpha / r (or alpha / sqrt(r) with rslora)
    rslora: bool = False  # rank-stabilised scale alpha / sqrt(r) (Kalajdzievski 2023)
    dropout: float = 0.0  # only 0: the adapter is merged into W inside the loss (docs/peft.md)
    target: tuple[str, ...] = ("blocks/attn/(q|v)/w",)  # regexes fully matching param paths

    def __post_init__(self) -> None:
        check(self.rank > 0, "rank", f"must be positive, got {self.rank}")
        check(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        check(
            self.dropout == 0.0,
            "dropout",
            f"got {self.dropout}; LoRA dropout acts on a layer's input before A, which the "
            "merged form W + scale*A@B does not see, so only 0.0 is supported",
        )
        check(bool(self.target) or self.method == "none", "target", "names no param")
        for pattern in self.target:
            try:
                re.compile(pattern)
            except re.error as err:
                check(False, "target", f"{pattern!r} is not a regex: {err}")

    @property
    def scale(self) -> float:
        """What A @ B is multiplied by: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)
