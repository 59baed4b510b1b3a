"""The `peft:` section: parameter-efficient fine-tuning of a frozen decoder (docs/peft.md).

    peft:
      method: lora             # "none" (default) trains what `train.freeze` leaves trainable
      rank: 8
      alpha: 16.0
      target: ["blocks/attn/(q|v)/w"]

With any method other than "none" the whole decoder is frozen and only the method's adapter
is trained (`llm.train.trainable.trainable_from_config`). Methods: lora, dora, qlora (LoRA on
an NF4 / int8 base), adalora, ia3 (merged into the weights) and prompt, prefix, adapter
(changing the forward pass). The fields below are shared by the LoRA family (rank, alpha,
rslora, target) or belong to the one method their comment names.
"""

from __future__ import annotations

import re
from typing import Literal

from llm.config.base import check, config_class

# each name other than "none" is a `Method` registered in llm/peft/__init__.py (a test checks)
PeftMethod = Literal[
    "none", "lora", "dora", "qlora", "adalora", "ia3", "prompt", "prefix", "adapter"
]

LORA_TARGET = ("blocks/attn/(q|v)/w",)  # Hu et al.'s q and v: every method not listed below
# ia3: rescale keys, values and the FFN intermediate (Liu et al. 2022, arXiv:2205.05638)
DEFAULT_TARGET = {"ia3": ("blocks/attn/(k|v)/w", "blocks/mlp/down/w")}


@config_class
class PeftConfig:
    """Which PEFT method, and its settings. LoRA (Hu et al. 2021, arXiv:2106.09685) is
    W + scale * A @ B on the targeted matrices; DoRA, QLoRA and AdaLoRA build on it."""

    method: PeftMethod = "none"  # any other value trains that adapter, freezes the decoder
    rank: int = 8  # r, the inner dimension of A [in, r] and B [r, out]
    alpha: float = 16.0  # scale = alpha / r (or alpha / sqrt(r) with rslora)
    rslora: bool = False  # rank-stabilised scale alpha / sqrt(r) (Kalajdzievski 2023)
    dropout: float = 0.0  # only 0: the adapter is merged into W inside the loss (docs/peft.md)
    # regexes fully matching param paths; null = the method's default (DEFAULT_TARGET)
    target: tuple[str, ...] | None = None
    # adalora (Zhang et al. 2023, arXiv:2303.10512): `rank` is the initial rank per matrix
    target_rank: int = 4  # adalora: average final rank per adapted matrix (budget / matrices)
    tinit: int = 0  # adalora: steps at the full initial budget before pruning starts
    tfinal: int = 0  # adalora: last steps at the target budget, the rank pattern fixed
    deltaT: int = 1  # adalora: steps between two budget allocations
    beta1: float = 0.85  # adalora: EMA coefficient of the sensitivity (paper eq. 10)
    beta2: float = 0.85  # adalora: EMA coefficient of its uncertainty (paper eq. 11)
    orth_reg: float = 0.5  # adalora: gamma, weight of ||P^T P - I||^2 + ||Q Q^T - I||^2
    # qlora (Dettmers et al. 2023, arXiv:2305.14314): the frozen base's storage (llm/peft/quant.py)
    quant: Literal["nf4", "int8"] = "nf4"  # qlora: 4-bit NormalFloat or int8 codes per weight
    quant_block: int = 64  # qlora: values per absmax scale, along each matrix's last axis
    # prompt (Lester et al. 2021, arXiv:2104.08691), prefix (Li & Liang 2021, arXiv:2101.00190)
    n_virtual_tokens: int = 20  # prompt, prefix: P virtual tokens / prefix entries per layer
    prefix_projection: int = 0  # prefix: hidden width of the MLP reparameterisation; 0: none
    # adapter (Houlsby et al. 2019, arXiv:1902.00751)
    adapter_dim: int = 16  # adapter: bottleneck width R of down [d_model, R] and up [R, d_model]
    adapter_placement: Literal["houlsby", "pfeiffer"] = "houlsby"  # adapter: attn+mlp | mlp

    def __post_init__(self) -> None:
        if self.target is None:  # resolved here, so `target` is always the patterns in use
            object.__setattr__(self, "target", DEFAULT_TARGET.get(self.method, LORA_TARGET))
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
        self._check_adalora()
        self._check_qlora()
        self._check_forward_methods()

    def _check_adalora(self) -> None:
        """AdaLoRA's budget fields (tinit + tfinal < train.steps is checked with the run)."""
        check(self.target_rank > 0, "target_rank", f"must be positive, got {self.target_rank}")
        check(
            self.method != "adalora" or self.target_rank <= self.rank,
            "target_rank",
            f"{self.target_rank} exceeds rank={self.rank}, the initial rank it prunes down from",
        )
        for name in ("tinit", "tfinal"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.deltaT >= 1, "deltaT", f"must be >= 1 step, got {self.deltaT}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            check(0 < value < 1, name, f"must be in (0, 1), got {value}")
        check(self.orth_reg >= 0, "orth_reg", f"must be >= 0, got {self.orth_reg}")

    def _check_qlora(self) -> None:
        """The block must be positive, and even for NF4 (two 4-bit codes share a byte); that
        it divides each matrix's last axis is checked against the model (llm/peft/qlora.py)."""
        check(self.quant in ("nf4", "int8"), "quant", f"must be nf4 or int8, got {self.quant!r}")
        check(self.quant_block > 0, "quant_block", f"must be positive, got {self.quant_block}")
        check(
            self.quant != "nf4" or self.quant_block % 2 == 0,
            "quant_block",
            f"{self.quant_block} must be even with quant=nf4 (two 4-bit codes per byte)",
        )

    def _check_forward_methods(self) -> None:
        """prompt / prefix / adapter sizes (llm/peft/prompt.py, prefix.py, adapters.py)."""
        for name in ("n_virtual_tokens", "adapter_dim"):
            value = getattr(self, name)
            check(value > 0, name, f"must be positive, got {value}")
        check(
            self.prefix_projection >= 0,
            "prefix_projection",
            f"must be >= 0 (0: learn the prefix directly), got {self.prefix_projection}",
        )
        check(
            self.adapter_placement in ("houlsby", "pfeiffer"),
            "adapter_placement",
            f"must be houlsby or pfeiffer, got {self.adapter_placement!r}",
        )

    @property
    def scale(self) -> float:
        """What A @ B is multiplied by: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)
