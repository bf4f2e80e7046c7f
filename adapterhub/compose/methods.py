"""The composition methods: one declarative unit each, registered in :data:`METHODS`.

A method takes one module's :class:`ModuleJob`: the terms ``(A_i, B_i, s_i, w_i)`` of the
inputs that adapt it, with PEFT's scaling s_i and the user's weight w_i. It returns low-rank
factors ``(A, B)`` of the composed update B @ A, together with what the method lost. It never
sees other modules, so memory holds one module's update at a time. A method may also offer a
batched function for a group of modules whose stacked factors have equal shapes, which the
engine prefers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

if TYPE_CHECKING:
    import torch

# The registry is read by ``--help`` and option validation, which must not import torch, so
# the tensor functions import torch and the tensor modules when they run.


@dataclass(frozen=True)
class Truncation:
    """The target of a truncation: a fixed rank, or the rank that keeps a share of the energy."""

    rank: int | None = None
    energy: float | None = None


@dataclass(frozen=True)
class Settings:
    """The method parameters of one composition, as validated by ComposeOptions."""

    truncation: Truncation = field(default_factory=Truncation)
    density: float | None = None
    majority_sign: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Parameter:
    """A ComposeOptions field that a method takes: required, or with a default."""

    name: str
    hint: str  # what a valid value is, for the message when it is missing
    required: bool = False
    default: Any = None


class Term(NamedTuple):
    """One input's factors for one module: A (r × in), B (out × r), PEFT scale, user weight."""

    lora_A: "torch.Tensor"
    lora_B: "torch.Tensor"
    scale: float
    weight: float

    @property
    def coefficient(self) -> float:
        return self.weight * self.scale

    def delta(self) -> "torch.Tensor":
        """Return the dense update s · B @ A, without the user's weight."""
        return (self.lora_B @ self.lora_A).mul_(self.scale)


@dataclass(frozen=True)
class ModuleJob:
    """The terms of one module, from the inputs that adapt it, in input order."""

    name: str
    terms: tuple[Term, ...]

    @property
    def stacked_shape(self) -> tuple[int, int, int]:
        """Return (out, in, R) of the stacked factors, R the sum of the input ranks."""
        first = self.terms[0]
        rank = sum(term.lora_A.shape[0] for term in self.terms)
        return first.lora_B.shape[0], first.lora_A.shape[1], rank


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
    """A composition method: its name, a one-line summary for ``--help``, its functions.

    ``combine_group``, when set, composes several modules of equal ``stacked_shape`` at once
    and must give the results ``combine`` gives. ``check`` runs on all jobs before any
    arithmetic, so problems are reported before work is spent. ``dense`` methods form each
    module's dense update.
    """

    name: str
    summary: str
    reference: str
    combine: Callable[[ModuleJob, Settings], ModuleResult]
    truncates: bool = False  # whether --rank / --energy apply
    parameters: tuple[Parameter, ...] = ()
    combine_group: Callable[[Sequence[ModuleJob], Settings], list[ModuleResult]] | None = None
    check: Callable[[Sequence[ModuleJob]], None] | None = None
    dense: bool = False


DENSITY = Parameter("density", "the share of each update's entries to keep, in (0, 1]", required=True)
MAJORITY_SIGN = Parameter("majority_sign", "total or frequency", default="total")
SEED = Parameter("seed", "a non-negative integer", default=0)
TRUNCATION = "; then truncated SVD"


def combine_cat(job: ModuleJob, settings: Settings) -> ModuleResult:
    """Return the exact weighted sum: factors stacked side by side, rank Σ r_i."""
    from adapterhub.compose.lowrank import stack_factors

    b, a = stack_factors(_weighted(job))
    return ModuleResult(lora_A=a, lora_B=b)


def combine_svd(job: ModuleJob, settings: Settings) -> ModuleResult:
    """Return the best rank-r approximation of the weighted sum, without the dense update."""
    from adapterhub.compose.lowrank import stack_factors, truncated_svd

    b, a = stack_factors(_weighted(job))
    truncation = settings.truncation
    result = truncated_svd(b, a, rank=truncation.rank, energy=truncation.energy)
    return ModuleResult(result.A, result.B, result.retained_energy, result.relative_error)


def combine_svd_group(jobs: Sequence[ModuleJob], settings: Settings) -> list[ModuleResult]:
    """Run :func:`combine_svd` on modules of equal stacked shape through one batched QR and SVD."""
    import torch

    from adapterhub.compose.lowrank import (
        core_svd_batched,
        rank_for_energy,
        stack_factors,
        truncate_core,
        truncate_core_item,
    )

    stacked = [stack_factors(_weighted(job)) for job in jobs]
    core = core_svd_batched(torch.stack([b for b, _ in stacked]), torch.stack([a for _, a in stacked]))
    del stacked

    truncation = settings.truncation
    if truncation.rank is not None:
        batch = truncate_core(core, truncation.rank)
        return [
            ModuleResult(batch.A[index], batch.B[index], batch.retained_energy[index],
                         batch.relative_error[index])
            for index in range(len(jobs))
        ]

    # One device-to-host copy of the singular values for the whole group.
    singular_values = core.S.to("cpu")
    results = []
    for index in range(len(jobs)):
        rank = rank_for_energy(singular_values[index], truncation.energy)
        item = truncate_core_item(core, index, rank)
        results.append(ModuleResult(item.A, item.B, item.retained_energy, item.relative_error))
    return results


def combine_linear(job: ModuleJob, settings: Settings) -> ModuleResult:
    """Return PEFT's factor average: A = Σ ±√|c_i| A_i, B = Σ √|c_i| B_i with c_i = w_i s_i.

    As PEFT 0.21 does for negative weights, the sign of c_i goes on the A side only.
    """
    a = sum(_signed_root(term.coefficient) * term.lora_A for term in job.terms)
    b = sum(abs(term.coefficient) ** 0.5 * term.lora_B for term in job.terms)
    return ModuleResult(lora_A=a, lora_B=b)


def check_linear(jobs: Sequence[ModuleJob]) -> None:
    """Raise ShapeMismatchError listing every module whose inputs have different ranks."""
    from adapterhub.errors import ShapeMismatchError

    problems = []
    for job in jobs:
        ranks = [term.lora_A.shape[0] for term in job.terms]
        if len(set(ranks)) > 1:
            problems.append(f"{job.name!r} ({', '.join(str(rank) for rank in ranks)})")
    if problems:
        raise ShapeMismatchError(
            "method 'linear' averages the factors themselves, so every module needs one rank "
            f"in all inputs, but these differ: {'; '.join(problems)}; use cat or svd, which "
            "sum the updates of any ranks"
        )


def _signed_root(coefficient: float) -> float:
    root = abs(coefficient) ** 0.5
    return root if coefficient >= 0 else -root


def _weighted(job: ModuleJob) -> list[tuple["torch.Tensor", "torch.Tensor", float]]:
    return [(term.lora_A, term.lora_B, term.coefficient) for term in job.terms]


def _dense_method(merge: Callable[..., "torch.Tensor"]) -> Callable[[ModuleJob, Settings], ModuleResult]:
    """Wrap an element-wise merge of dense updates into a method: merge, then truncate."""

    def combine(job: ModuleJob, settings: Settings) -> ModuleResult:
        deltas = [term.delta() for term in job.terms]
        weights = [term.weight for term in job.terms]
        merged = merge(job.name, deltas, weights, settings)
        del deltas
        return truncate_dense(merged, settings.truncation)

    combine.__doc__ = merge.__doc__
    return combine


def truncate_dense(merged: "torch.Tensor", truncation: Truncation) -> ModuleResult:
    """Return a dense update to low rank: randomized top-r SVD for --rank, full SVD for --energy."""
    from adapterhub.compose.lowrank import dense_truncated_svd, randomized_truncated_svd

    if truncation.energy is not None:
        result = dense_truncated_svd(merged, energy=truncation.energy)
    else:
        result = randomized_truncated_svd(merged, truncation.rank)
    return ModuleResult(result.A, result.B, result.retained_energy, result.relative_error)


def merge_ties(name: str, deltas, weights, settings: Settings):
    """TIES: magnitude pruning, sign election and disjoint merge of the dense updates."""
    from adapterhub.compose import elementwise

    return elementwise.ties(deltas, weights, settings.density, settings.majority_sign)


def merge_dare_linear(name: str, deltas, weights, settings: Settings):
    """DARE: random drop with rescaling of each dense update, then the weighted sum."""
    from adapterhub.compose import elementwise

    generator = elementwise.module_generator(settings.seed, name, deltas[0].device)
    return elementwise.dare_linear(deltas, weights, settings.density, generator)


def merge_dare_ties(name: str, deltas, weights, settings: Settings):
    """DARE's random drop, then TIES's sign election and disjoint merge."""
    from adapterhub.compose import elementwise

    generator = elementwise.module_generator(settings.seed, name, deltas[0].device)
    return elementwise.dare_ties(deltas, weights, settings.density, settings.majority_sign, generator)


def merge_magnitude_prune(name: str, deltas, weights, settings: Settings):
    """Magnitude pruning of each dense update, then the weighted sum."""
    from adapterhub.compose import elementwise

    return elementwise.magnitude_prune_merge(deltas, weights, settings.density)


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
            "from the factors",
            reference="Eckart–Young truncation of Σ w_i ΔW_i via QR of the stacked factors; "
            "PEFT combination_type='svd' computes the same from the dense sum",
            combine=combine_svd,
            combine_group=combine_svd_group,
            truncates=True,
        ),
        Method(
            name="linear",
            summary="PEFT's factor averaging (equal ranks), to reproduce PEFT; NOT the "
            "weighted sum: cross terms B_i A_j appear",
            reference="A = Σ ±√|w_i s_i| A_i, B = Σ √|w_i s_i| B_i; PEFT combination_type='linear'",
            combine=combine_linear,
            check=check_linear,
        ),
        Method(
            name="ties",
            summary="TIES on dense ΔW: trim to --density, elect signs, average the agreeing"
            + TRUNCATION,
            reference="Yadav et al. 2023, TIES-Merging; PEFT combination_type='ties_svd'",
            combine=_dense_method(merge_ties),
            truncates=True,
            parameters=(DENSITY, MAJORITY_SIGN),
            dense=True,
        ),
        Method(
            name="dare_linear",
            summary="DARE on dense ΔW: drop at random (keep --density, rescale), weighted sum"
            + TRUNCATION,
            reference="Yu et al. 2023, DARE; PEFT combination_type='dare_linear_svd'",
            combine=_dense_method(merge_dare_linear),
            truncates=True,
            parameters=(DENSITY, SEED),
            dense=True,
        ),
        Method(
            name="dare_ties",
            summary="DARE's random drop with TIES's sign election and disjoint merge"
            + TRUNCATION,
            reference="Yu et al. 2023 with Yadav et al. 2023; PEFT combination_type='dare_ties_svd'",
            combine=_dense_method(merge_dare_ties),
            truncates=True,
            parameters=(DENSITY, MAJORITY_SIGN, SEED),
            dense=True,
        ),
        Method(
            name="magnitude_prune",
            summary="keep the --density largest entries of each ΔW, weighted sum"
            + TRUNCATION,
            reference="PEFT combination_type='magnitude_prune_svd'",
            combine=_dense_method(merge_magnitude_prune),
            truncates=True,
            parameters=(DENSITY,),
            dense=True,
        ),
    )
}
