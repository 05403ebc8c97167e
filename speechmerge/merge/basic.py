"""Weight Averaging and Task Arithmetic: the baselines every other method builds on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .common import mean, pruned_task_arithmetic

__all__ = ["task_arithmetic", "weight_averaging"]


def weight_averaging(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """WA: θ0 + (1/n) Σ τ_i = (1/n) Σ θ_i (λ ignored)."""
    return mean(base, taskvectors).add_(base)


def task_arithmetic(
    name: str, base: Tensor, taskvectors: Sequence[Tensor], params: list[dict[str, Any]], lam: float
) -> Tensor:
    """TA: θ0 + λ Σ τ_i."""
    return pruned_task_arithmetic(name, base, taskvectors, params, lam)
