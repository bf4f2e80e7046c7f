"""Module-by-module comparison of two adapters from their factors (``adapterhub inspect``).

For each module both adapters adapt, the cosine similarity of the two updates ΔW and the
overlap of their column spaces, computed from the factors without forming ΔW. Modules that
only one adapter adapts are listed apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from adapterhub.compose.engine import check_composable, plan_modules
from adapterhub.compose.inputs import ComposeInput
from adapterhub.compose.lowrank import truncated_svd
from adapterhub.compose.similarity import cosine_similarity, subspace_overlap


@dataclass(frozen=True)
class ModuleSimilarity:
    """The similarity of two adapters' updates of one module.

    ``cosine`` is ⟨ΔW_1, ΔW_2⟩_F / (‖ΔW_1‖_F ‖ΔW_2‖_F), in [-1, 1]. ``overlap`` is
    ‖Q_1ᵀQ_2‖_F² / min(k_1, k_2) for orthonormal bases Q of the column spaces of ΔW_1 and ΔW_2
    of numerical ranks k: 1 when one contains the other, 0 when they are orthogonal.
    """

    module: str
    cosine: float
    overlap: float


@dataclass(frozen=True)
class Comparison:
    """The comparison of two adapters: shared modules, then those only one adapts."""

    first: str
    second: str
    modules: tuple[ModuleSimilarity, ...]
    only_first: tuple[str, ...]
    only_second: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "modules": [asdict(row) for row in self.modules],
            "only_first": list(self.only_first),
            "only_second": list(self.only_second),
        }


def compare(first: ComposeInput, second: ComposeInput) -> Comparison:
    """Compare two adapters module by module, in float64.

    Raises :class:`UnsupportedCompositionError` for adapters whose update is not B·A and
    :class:`ShapeMismatchError` when a shared module has different shapes.
    """
    inputs = [first, second]
    check_composable(inputs)
    plan = plan_modules(inputs)

    rows = []
    only = ([], [])
    for name, members in plan.items():
        if len(members) == 1:
            only[members[0][0]].append(name)
            continue
        rows.append(_similarity(name, members[0][1], members[1][1]))
    return Comparison(first.label, second.label, tuple(rows), tuple(only[0]), tuple(only[1]))


def _similarity(name: str, first, second) -> ModuleSimilarity:
    a1, b1 = (factor.to(torch.float64) for factor in first.factors())
    a2, b2 = (factor.to(torch.float64) for factor in second.factors())
    b1, b2 = first.scale * b1, second.scale * b2

    cosine = cosine_similarity(b1, a1, b2, a2)
    # The column space of ΔW is that of B only when A has full row rank, so take it from the
    # SVD of the product, which the factored truncation gives without forming ΔW.
    return ModuleSimilarity(name, cosine, subspace_overlap(_left(b1, a1), _left(b2, a2)))


def _left(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Return U·diag(S) of ΔW = B·A: its columns span the column space of ΔW.

    Scaling by S rather than S^½ keeps directions at rounding level far below the rank
    cut-off of subspace_overlap.
    """
    result = truncated_svd(b, a, rank=a.shape[0])
    return result.B * result.singular_values[: result.rank].sqrt()
