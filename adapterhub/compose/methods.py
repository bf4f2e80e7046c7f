"""The composition methods: one declarative unit each, registered in :data:`METHODS`.

A method takes the weighted terms of one module, ``(A_i, B_i, c_i)`` with c_i = w_i · s_i (the
user's weight times PEFT's scaling), and returns low-rank factors ``(A, B)`` of the composed
update B @ A, together with what the method lost. It never sees other modules, so memory
holds one module's update at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch

    Term = tuple[torch.Tensor, torch.Tensor, float]

# The registry is read by ``--help`` and option validation, which must not import torch, so
# the tensor functions import the low-rank module when they run.


@dataclass(frozen=True)
class Truncation:
    """How a method returns to low rank: a fixed rank, or the rank that keeps an energy."""

    rank: int | None = None
    energy: float | None = None


@dataclass(frozen=True)
class ModuleResult:
    """The composed factors of one module and the cost of truncating them."""

    lora_A: "torch.Tensor"  # r × in
    lora_B: "torch.Tensor"  # out × r
    retained_energy: float = 1.0
    relative_error: float = 0.0

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


@dataclass(frozen=True)
class Method:
    """A composition method: its name, a one-line summary for ``--help``, and its function."""

    name: str
    summary: str
    reference: str
    combine: Callable[[Sequence["Term"], Truncation], ModuleResult]
    truncates: bool = False  # whether --rank / --energy apply
    parameters: tuple[str, ...] = field(default=())


def combine_cat(terms: Sequence[Term], truncation: Truncation) -> ModuleResult:
    """Return the exact weighted sum: factors stacked side by side, rank Σ r_i."""
    from adapterhub.compose.lowrank import stack_factors

    b, a = stack_factors(terms)
    return ModuleResult(lora_A=a, lora_B=b)


def combine_svd(terms: Sequence[Term], truncation: Truncation) -> ModuleResult:
    """Return the best rank-r approximation of the weighted sum, without the dense update."""
    from adapterhub.compose.lowrank import stack_factors, truncated_svd

    b, a = stack_factors(terms)
    result = truncated_svd(b, a, rank=truncation.rank, energy=truncation.energy)
    return ModuleResult(
        lora_A=result.A,
        lora_B=result.B,
        retained_energy=result.retained_energy,
        relative_error=result.relative_error,
    )


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            name="cat",
            summary="exact weighted sum; the result's rank is the sum of the input ranks",
            reference="ΔW = Σ w_i ΔW_i; PEFT add_weighted_adapter(combination_type='cat')",
            combine=combine_cat,
        ),
        Method(
            name="svd",
            summary="best rank-r approximation of the exact sum (--rank or --energy), "
            "computed from the factors",
            reference="Eckart–Young truncation of Σ w_i ΔW_i via QR of the stacked factors",
            combine=combine_svd,
            truncates=True,
        ),
    )
}
