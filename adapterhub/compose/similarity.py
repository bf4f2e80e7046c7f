"""Similarity of two low-rank updates, computed from their factors without dense matrices.

``adapterhub inspect`` uses these to compare two adapters module by module. Shape errors raise
``ValueError`` with both shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adapterhub.compose.lowrank import _check_factor_shapes, orthonormalize


def cosine_similarity(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor) -> float:
    """Compute the Frobenius cosine of B1 @ A1 and B2 @ A2 from the factors alone.

    ⟨B1A1, B2A2⟩_F = trace((B1ᵀB2)(A2A1ᵀ)) needs only [r1, r2] Gram matrices. Pass the
    factors with their scales applied. Returns a float in [-1, 1], and 0.0 when either update
    is all zero. Raises ValueError when the shapes do not fit.
    """
    _check_factor_shapes(B1, A1, batched=False)
    _check_factor_shapes(B2, A2, batched=False)
    if B1.shape[0] != B2.shape[0] or A1.shape[1] != A2.shape[1]:
        raise ValueError(
            f"cannot compare updates of different shapes: B1 {tuple(B1.shape)} @ "
            f"A1 {tuple(A1.shape)} against B2 {tuple(B2.shape)} @ A2 {tuple(A2.shape)}"
        )

    inner = _frobenius_inner(B1, A1, B2, A2)
    # Both norms are mathematically ≥ 0, but rounding can push a tiny one below zero.
    norm_first = max(_frobenius_inner(B1, A1, B1, A1), 0.0) ** 0.5
    norm_second = max(_frobenius_inner(B2, A2, B2, A2), 0.0) ** 0.5
    if norm_first == 0.0 or norm_second == 0.0:
        return 0.0
    return min(1.0, max(-1.0, inner / (norm_first * norm_second)))


def _frobenius_inner(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor) -> float:
    # trace(X Y) = Σ X ∘ Yᵀ, with X = B1ᵀB2 and Yᵀ = A1A2ᵀ.
    return float(((B1.mT @ B2) * (A1 @ A2.mT)).sum())


def subspace_overlap(B1: Tensor, B2: Tensor) -> float:
    """Measure how much the column spaces of B1 [out, r1] and B2 [out, r2] coincide.

    Returns ‖Q1ᵀQ2‖_F² / min(k1, k2), where Q1 and Q2 are orthonormal bases of the column
    spaces and k1 and k2 their numerical ranks: 1.0 when one space contains the other, 0.0
    when they are orthogonal. Directions with singular value below max(out, r) · eps · S_max
    count as zero, so duplicate columns do not inflate the rank. Returns 0.0 when either
    matrix is all zero. Raises ValueError when the shapes do not fit.
    """
    if B1.ndim != 2 or B2.ndim != 2 or B1.shape[0] != B2.shape[0]:
        raise ValueError(
            f"B1 has shape {tuple(B1.shape)} and B2 has shape {tuple(B2.shape)}, "
            "but both must be 2-D [out, r] with the same out"
        )

    basis_first = _column_space_basis(B1)
    basis_second = _column_space_basis(B2)
    smaller_rank = min(basis_first.shape[-1], basis_second.shape[-1])
    if smaller_rank == 0:
        return 0.0

    overlap = float((basis_first.mT @ basis_second).square().sum()) / smaller_rank
    return min(1.0, max(0.0, overlap))


def _column_space_basis(matrix: Tensor) -> Tensor:
    # The SVD of the small R factor reveals the numerical rank more reliably than its diagonal.
    q, r = orthonormalize(matrix)
    u, s, _ = torch.linalg.svd(r, full_matrices=False)

    if s.numel() == 0 or float(s[0]) == 0.0:
        return q[:, :0]

    # The same cut-off as numpy.linalg.matrix_rank: max(m, n) · eps · S_max.
    tolerance = max(matrix.shape) * torch.finfo(matrix.dtype).eps * float(s[0])
    numerical_rank = int((s > tolerance).sum())
    return q @ u[:, :numerical_rank]
