"""Tests of the low-rank arithmetic against dense references computed from the definitions."""

from __future__ import annotations

import math

import pytest
import torch

from adapterhub.compose.lowrank import (
    core_svd_batched,
    dense_truncated_svd,
    orthonormalize,
    rank_for_energy,
    stack_factors,
    truncate_core_item,
    truncated_svd,
    truncated_svd_batched,
)
from adapterhub.compose.similarity import cosine_similarity, subspace_overlap

F64 = torch.float64
F32 = torch.float32


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(20240601)


def random_pair(generator, out, rank, in_features, dtype=F64):
    """Return a LoRA pair (A [rank, in], B [out, rank]) with Gaussian entries."""
    a = torch.randn(rank, in_features, dtype=dtype, generator=generator)
    b = torch.randn(out, rank, dtype=dtype, generator=generator)
    return a, b


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def best_rank_approximation(delta: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u[:, :rank] * s[:rank] @ vh[:rank]


def orthogonality_error(q: torch.Tensor) -> float:
    identity = torch.eye(q.shape[-1], dtype=q.dtype)
    return float((q.mT @ q - identity).abs().max())


def known_spectrum_pair(generator, singular_values, out=40, in_features=30):
    """Return (B, A) whose product has exactly the given singular values."""
    rank = len(singular_values)
    left, _ = torch.linalg.qr(torch.randn(out, rank, dtype=F64, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(in_features, rank, dtype=F64, generator=generator))
    values = torch.tensor(singular_values, dtype=F64)
    return left * values, right.mT


# stack_factors


def test_stack_equals_weighted_sum(generator):
    terms = [
        (*random_pair(generator, 24, 4, 16), 0.7),
        (*random_pair(generator, 24, 8, 16), -1.3),
        (*random_pair(generator, 24, 2, 16), 2.0),
    ]
    expected = sum(c * b @ a for a, b, c in terms)

    stacked_b, stacked_a = stack_factors(terms)

    assert stacked_b.shape == (24, 14)
    assert stacked_a.shape == (14, 16)
    assert relative_error(stacked_b @ stacked_a, expected) <= 1e-12


def test_stack_batched_terms(generator):
    first = (torch.randn(3, 4, 10, dtype=F64, generator=generator),
             torch.randn(3, 12, 4, dtype=F64, generator=generator), 1.5)
    second = (torch.randn(3, 2, 10, dtype=F64, generator=generator),
              torch.randn(3, 12, 2, dtype=F64, generator=generator), -0.5)
    expected = 1.5 * first[1] @ first[0] - 0.5 * second[1] @ second[0]

    stacked_b, stacked_a = stack_factors([first, second])

    assert stacked_b.shape == (3, 12, 6)
    assert stacked_a.shape == (3, 6, 10)
    assert relative_error(stacked_b @ stacked_a, expected) <= 1e-12


def test_stack_rejects_in_features_mismatch(generator):
    a0, b0 = random_pair(generator, 24, 4, 16)
    a1, b1 = random_pair(generator, 24, 2, 20)

    with pytest.raises(ValueError) as excinfo:
        stack_factors([(a0, b0, 1.0), (a1, b1, 1.0)])

    assert str(excinfo.value) == (
        "cannot stack LoRA factors:\n"
        "term 1: A has shape (2, 20) and B has shape (24, 2), but term 0 has A (4, 16) and "
        "B (24, 4). The in_features differ (20 against 16)"
    )


def test_stack_rejects_out_features_mismatch(generator):
    a0, b0 = random_pair(generator, 24, 4, 16)
    a1, b1 = random_pair(generator, 30, 4, 16)

    with pytest.raises(ValueError) as excinfo:
        stack_factors([(a0, b0, 1.0), (a1, b1, 1.0)])

    assert str(excinfo.value) == (
        "cannot stack LoRA factors:\n"
        "term 1: A has shape (4, 16) and B has shape (30, 4), but term 0 has A (4, 16) and "
        "B (24, 4). The out_features differ (30 against 24)"
    )


def test_stack_lists_every_bad_term(generator):
    a0, b0 = random_pair(generator, 24, 4, 16)
    a1, b1 = random_pair(generator, 30, 4, 20)
    a2, _ = random_pair(generator, 24, 4, 16)
    b2 = torch.randn(24, 3, dtype=F64, generator=generator)

    with pytest.raises(ValueError) as excinfo:
        stack_factors([(a0, b0, 1.0), (a1, b1, 1.0), (a2, b2, 1.0)])

    assert str(excinfo.value) == (
        "cannot stack LoRA factors:\n"
        "term 1: A has shape (4, 20) and B has shape (30, 4), but term 0 has A (4, 16) and "
        "B (24, 4). The in_features differ (20 against 16) and out_features differ "
        "(30 against 24)\n"
        "term 2: A has shape (4, 16) and B has shape (24, 3), but expected A [..., r, in] and "
        "B [..., out, r] with the same number of dimensions"
    )


def test_stack_rejects_batch_mismatch(generator):
    first = (torch.randn(3, 4, 10, dtype=F64), torch.randn(3, 12, 4, dtype=F64), 1.0)
    second = (torch.randn(2, 4, 10, dtype=F64), torch.randn(2, 12, 4, dtype=F64), 1.0)

    with pytest.raises(ValueError) as excinfo:
        stack_factors([first, second])

    assert str(excinfo.value) == (
        "cannot stack LoRA factors:\n"
        "term 1: A has shape (2, 4, 10) and B has shape (2, 12, 4), but term 0 has "
        "A (3, 4, 10) and B (3, 12, 4). The batch dimensions differ"
    )


def test_stack_rejects_no_terms():
    with pytest.raises(ValueError) as excinfo:
        stack_factors([])

    assert str(excinfo.value) == "no terms to stack; pass at least one (A, B, coefficient) term"


# orthonormalize


@pytest.mark.parametrize("dtype", [F64, F32])
def test_orthonormalize_tall(generator, dtype):
    matrix = torch.randn(200, 12, dtype=dtype, generator=generator)
    tolerance = 1e-13 if dtype == F64 else 1e-5

    q, r = orthonormalize(matrix)

    assert q.shape == (200, 12)
    assert r.shape == (12, 12)
    assert orthogonality_error(q) <= tolerance
    assert relative_error(q @ r, matrix) <= tolerance
    assert torch.equal(r, r.triu())


def test_orthonormalize_wide(generator):
    matrix = torch.randn(6, 10, dtype=F64, generator=generator)

    q, r = orthonormalize(matrix)

    assert q.shape == (6, 6)
    assert r.shape == (6, 10)
    assert orthogonality_error(q) <= 1e-13
    assert relative_error(q @ r, matrix) <= 1e-13


@pytest.mark.parametrize("dtype", [F64, F32])
def test_orthonormalize_duplicate_columns(generator, dtype):
    half = torch.randn(100, 5, dtype=dtype, generator=generator)
    matrix = torch.cat([half, half], dim=1)
    tolerance = 1e-13 if dtype == F64 else 1e-5

    q, r = orthonormalize(matrix)

    assert orthogonality_error(q) <= tolerance
    assert relative_error(q @ r, matrix) <= tolerance


def test_orthonormalize_zero_matrix():
    matrix = torch.zeros(50, 4, dtype=F64)

    q, r = orthonormalize(matrix)

    assert orthogonality_error(q) <= 1e-13
    assert torch.count_nonzero(r) == 0


@pytest.mark.parametrize(
    ("dtype", "exponent", "tolerance"),
    [(F64, 4, 1e-13), (F64, 8, 1e-13), (F64, 12, 1e-13), (F32, 3, 1e-5), (F32, 6, 1e-5)],
)
def test_orthonormalize_ill_conditioned(generator, dtype, exponent, tolerance):
    # κ = 10**exponent spans the range CholQR2 handles and beyond it. Past it, Cholesky of
    # the Gram matrix may still succeed, which the accuracy check must catch.
    left, _ = torch.linalg.qr(torch.randn(80, 6, dtype=F64, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=generator))
    matrix = (left * torch.logspace(0, -exponent, 6, dtype=F64) @ right).to(dtype)

    q, r = orthonormalize(matrix)

    assert orthogonality_error(q) <= tolerance
    assert relative_error(q @ r, matrix) <= tolerance


def test_orthonormalize_mixed_batch(generator):
    batch = torch.randn(4, 60, 6, dtype=F64, generator=generator)
    batch[1] = 0.0
    batch[2, :, 3] = batch[2, :, 0]

    q, r = orthonormalize(batch)

    assert q.shape == (4, 60, 6)
    assert r.shape == (4, 6, 6)
    for index in range(4):
        assert orthogonality_error(q[index]) <= 1e-13, index
        residual = float((q[index] @ r[index] - batch[index]).norm())
        assert residual <= 1e-13 * (1 + float(batch[index].norm())), index


# truncated_svd


@pytest.mark.parametrize("rank", [1, 5, 11])
def test_truncated_svd_float64(generator, rank):
    first = (*random_pair(generator, 64, 8, 48), 1.0)
    second = (*random_pair(generator, 64, 4, 48), -0.6)
    b, a = stack_factors([first, second])
    delta = b @ a

    result = truncated_svd(b, a, rank=rank)

    assert result.rank == rank
    assert result.B.shape == (64, rank)
    assert result.A.shape == (rank, 48)
    assert relative_error(result.B @ result.A, best_rank_approximation(delta, rank)) <= 1e-10


def test_truncated_svd_float32(generator):
    a0, b0 = random_pair(generator, 64, 8, 48, dtype=F32)
    a1, b1 = random_pair(generator, 64, 8, 48, dtype=F32)
    b, a = stack_factors([(a0, b0, 1.0), (a1, b1, 0.5)])
    reference = best_rank_approximation(b.double() @ a.double(), 6)

    result = truncated_svd(b, a, rank=6)

    assert result.B.dtype == F32
    assert result.A.dtype == F32
    assert relative_error(result.B.double() @ result.A.double(), reference) <= 1e-5


def test_truncated_svd_reports_loss(generator):
    a, b = random_pair(generator, 50, 10, 40)
    delta = b @ a
    reference_values = torch.linalg.svdvals(delta)[:10]

    result = truncated_svd(b, a, rank=4)

    actual_error = relative_error(result.B @ result.A, delta)
    expected_energy = float(reference_values[:4].square().sum() / reference_values.square().sum())
    assert torch.allclose(result.singular_values, reference_values, rtol=1e-12, atol=0)
    assert result.retained_energy == pytest.approx(expected_energy, rel=1e-12)
    assert result.relative_error == pytest.approx(actual_error, rel=1e-10)
    assert result.relative_error == pytest.approx(math.sqrt(1 - result.retained_energy), rel=1e-10)


def test_truncated_svd_balanced_factors(generator):
    a, b = random_pair(generator, 50, 10, 40)

    result = truncated_svd(b, a, rank=4)

    expected = torch.diag(result.singular_values[:4])
    assert torch.allclose(result.B.mT @ result.B, expected, atol=1e-10)
    assert torch.allclose(result.A @ result.A.mT, expected, atol=1e-10)


def test_truncated_svd_rank_above_available(generator):
    a, b = random_pair(generator, 30, 6, 20)

    result = truncated_svd(b, a, rank=100)

    assert result.rank == 6
    assert result.B.shape == (30, 6)
    assert result.A.shape == (6, 20)
    assert relative_error(result.B @ result.A, b @ a) <= 1e-12
    assert result.retained_energy == 1.0
    assert result.relative_error == 0.0


def test_truncated_svd_zero_b(generator):
    a, _ = random_pair(generator, 30, 6, 20)
    b = torch.zeros(30, 6, dtype=F64)

    by_rank = truncated_svd(b, a, rank=4)
    by_energy = truncated_svd(b, a, energy=0.9)

    assert by_rank.rank == 4
    assert torch.count_nonzero(by_rank.B @ by_rank.A) == 0
    assert bool(torch.isfinite(by_rank.B).all())
    assert bool(torch.isfinite(by_rank.A).all())
    assert by_rank.retained_energy == 1.0
    assert by_rank.relative_error == 0.0
    assert by_energy.rank == 1


@pytest.mark.parametrize(("dtype", "tolerance"), [(F64, 1e-10), (F32, 1e-5)])
def test_truncated_svd_duplicate_adapters(generator, dtype, tolerance):
    a, b = random_pair(generator, 64, 8, 48, dtype=dtype)
    stacked_b, stacked_a = stack_factors([(a, b, 0.5), (a, b, 0.5)])
    delta = b.double() @ a.double()

    result = truncated_svd(stacked_b, stacked_a, rank=8)

    assert relative_error(result.B.double() @ result.A.double(), delta) <= tolerance
    assert result.relative_error <= tolerance
    assert float(result.singular_values[8:].max()) <= tolerance * float(result.singular_values[0])


def test_truncated_svd_energy_picks_smallest_rank(generator):
    # Energy shares of S² = 16, 9, 4, 1 are 0.533, 0.833, 0.967 and 1.
    b, a = known_spectrum_pair(generator, [4.0, 3.0, 2.0, 1.0])

    for energy, expected_rank in [(0.5, 1), (0.6, 2), (25 / 30, 2), (0.9, 3), (0.99, 4), (1.0, 4)]:
        result = truncated_svd(b, a, energy=energy)
        assert result.rank == expected_rank, energy
        assert result.retained_energy >= energy - 1e-12, energy


def test_truncated_svd_energy_ignores_zero_directions(generator):
    b, a = known_spectrum_pair(generator, [4.0, 3.0])
    stacked_b, stacked_a = stack_factors([(a, b, 1.0), (a, b, 1.0)])

    result = truncated_svd(stacked_b, stacked_a, energy=1.0)

    assert result.rank == 2


@pytest.mark.parametrize(
    ("rank", "energy", "message"),
    [
        (None, None, "pass exactly one of rank and energy, got neither"),
        (4, 0.9, "pass exactly one of rank and energy, got both"),
        (0, None, "rank 0 is invalid; expected a positive integer"),
        (2.5, None, "rank 2.5 is invalid; expected a positive integer"),
        (None, 0.0, "energy 0.0 is invalid; expected a number in (0, 1]"),
        (None, 1.5, "energy 1.5 is invalid; expected a number in (0, 1]"),
        (None, float("nan"), "energy nan is invalid; expected a number in (0, 1]"),
    ],
)
def test_truncated_svd_rejects_options(generator, rank, energy, message):
    a, b = random_pair(generator, 10, 3, 8)

    with pytest.raises(ValueError) as excinfo:
        truncated_svd(b, a, rank=rank, energy=energy)

    assert str(excinfo.value) == message


def test_truncated_svd_rejects_shapes(generator):
    a, _ = random_pair(generator, 10, 3, 8)
    b = torch.randn(10, 4, dtype=F64)

    with pytest.raises(ValueError) as excinfo:
        truncated_svd(b, a, rank=2)

    assert str(excinfo.value) == (
        "B has shape (10, 4) and A has shape (3, 8), but expected B [out, R] and A [R, in]"
    )


# batched truncation


def test_batched_equals_per_item(generator):
    b = torch.randn(5, 40, 12, dtype=F64, generator=generator)
    a = torch.randn(5, 12, 30, dtype=F64, generator=generator)
    b[3] = 0.0

    batch = truncated_svd_batched(b, a, rank=4)

    assert batch.B.shape == (5, 40, 4)
    assert batch.A.shape == (5, 4, 30)
    for index in range(5):
        single = truncated_svd(b[index], a[index], rank=4)
        product = batch.B[index] @ batch.A[index]
        assert torch.allclose(product, single.B @ single.A, atol=1e-12), index
        values = batch.singular_values[index]
        assert torch.allclose(values, single.singular_values, atol=1e-12), index
        energy = batch.retained_energy[index]
        assert energy == pytest.approx(single.retained_energy, abs=1e-12), index
        error = batch.relative_error[index]
        assert error == pytest.approx(single.relative_error, abs=1e-12), index


def test_batched_rank_above_available(generator):
    b = torch.randn(2, 20, 3, dtype=F64, generator=generator)
    a = torch.randn(2, 3, 15, dtype=F64, generator=generator)

    batch = truncated_svd_batched(b, a, rank=10)

    assert batch.rank == 3
    assert relative_error(batch.B @ batch.A, b @ a) <= 1e-12


def test_core_item_per_module_energy(generator):
    first_b, first_a = known_spectrum_pair(generator, [4.0, 3.0, 2.0, 1.0])
    second_b, second_a = known_spectrum_pair(generator, [5.0, 0.5, 0.1, 0.01])
    b = torch.stack([first_b, second_b])
    a = torch.stack([first_a, second_a])

    core = core_svd_batched(b, a)
    ranks = [rank_for_energy(core.S[index], 0.95) for index in range(2)]
    results = [truncate_core_item(core, index, ranks[index]) for index in range(2)]

    assert ranks == [3, 1]
    for index in range(2):
        expected = truncated_svd(b[index], a[index], energy=0.95)
        product = results[index].B @ results[index].A
        assert results[index].rank == expected.rank, index
        assert torch.allclose(product, expected.B @ expected.A, atol=1e-12), index
        energy = results[index].retained_energy
        assert energy == pytest.approx(expected.retained_energy, abs=1e-12), index


def test_core_svd_rejects_unbatched(generator):
    a, b = random_pair(generator, 10, 3, 8)

    with pytest.raises(ValueError) as excinfo:
        core_svd_batched(b, a)

    assert str(excinfo.value) == (
        "B has shape (10, 3) and A has shape (3, 8), "
        "but expected B [n, out, R] and A [n, R, in]"
    )


# dense_truncated_svd


def test_dense_truncated_svd(generator):
    delta = torch.randn(30, 20, dtype=F64, generator=generator)

    result = dense_truncated_svd(delta, rank=5)

    assert result.rank == 5
    assert relative_error(result.B @ result.A, best_rank_approximation(delta, 5)) <= 1e-12
    actual_error = relative_error(result.B @ result.A, delta)
    assert result.relative_error == pytest.approx(actual_error, rel=1e-10)
    assert torch.allclose(result.B.mT @ result.B, result.A @ result.A.mT, atol=1e-10)


def test_dense_truncated_svd_energy(generator):
    b, a = known_spectrum_pair(generator, [4.0, 3.0, 2.0, 1.0])

    result = dense_truncated_svd(b @ a, energy=0.9)

    assert result.rank == 3
    assert result.retained_energy == pytest.approx(29 / 30, rel=1e-12)


def test_dense_truncated_svd_rank_above_available(generator):
    delta = torch.randn(8, 5, dtype=F64, generator=generator)

    result = dense_truncated_svd(delta, rank=50)

    assert result.rank == 5
    assert relative_error(result.B @ result.A, delta) <= 1e-12


def test_dense_truncated_svd_zero():
    result = dense_truncated_svd(torch.zeros(8, 5, dtype=F64), energy=0.5)

    assert result.rank == 1
    assert result.retained_energy == 1.0
    assert result.relative_error == 0.0


# rank_for_energy


def test_rank_for_energy_boundaries():
    values = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64)

    assert rank_for_energy(values, 0.1) == 1
    assert rank_for_energy(values, 16 / 30) == 1
    assert rank_for_energy(values, 0.54) == 2
    assert rank_for_energy(values, 29 / 30) == 3
    assert rank_for_energy(values, 0.97) == 4
    assert rank_for_energy(values, 1.0) == 4


def test_rank_for_energy_all_zero():
    assert rank_for_energy(torch.zeros(5, dtype=F64), 0.99) == 1


def test_rank_for_energy_rejects_matrix():
    with pytest.raises(ValueError) as excinfo:
        rank_for_energy(torch.ones(2, 2, dtype=F64), 0.5)

    assert str(excinfo.value) == (
        "singular values must be a non-empty 1-D tensor, got shape (2, 2)"
    )


# cosine_similarity and subspace_overlap


def test_cosine_matches_dense(generator):
    a1, b1 = random_pair(generator, 30, 4, 20)
    a2, b2 = random_pair(generator, 30, 6, 20)
    delta1, delta2 = b1 @ a1, b2 @ a2
    expected = float((delta1 * delta2).sum() / (delta1.norm() * delta2.norm()))

    assert cosine_similarity(b1, a1, b2, a2) == pytest.approx(expected, abs=1e-12)


def test_cosine_special_cases(generator):
    a, b = random_pair(generator, 30, 4, 20)
    other_a = torch.zeros(3, 20, dtype=F64)
    other_a[:, :5] = torch.randn(3, 5, dtype=F64, generator=generator)
    a_rest = a.clone()
    a_rest[:, :5] = 0.0
    other_b = torch.randn(30, 3, dtype=F64, generator=generator)

    assert cosine_similarity(b, a, b, a) == pytest.approx(1.0, abs=1e-12)
    assert cosine_similarity(b, a, -b, a) == pytest.approx(-1.0, abs=1e-12)
    assert cosine_similarity(b, a_rest, other_b, other_a) == pytest.approx(0.0, abs=1e-12)
    assert cosine_similarity(torch.zeros_like(b), a, b, a) == 0.0


def test_cosine_rejects_shapes(generator):
    a1, b1 = random_pair(generator, 30, 4, 20)
    a2, b2 = random_pair(generator, 31, 4, 20)

    with pytest.raises(ValueError) as excinfo:
        cosine_similarity(b1, a1, b2, a2)

    assert str(excinfo.value) == (
        "cannot compare updates of different shapes: "
        "B1 (30, 4) @ A1 (4, 20) against B2 (31, 4) @ A2 (4, 20)"
    )


def test_overlap_matches_dense(generator):
    b1 = torch.randn(30, 4, dtype=F64, generator=generator)
    b2 = torch.randn(30, 6, dtype=F64, generator=generator)
    projection1 = b1 @ torch.linalg.pinv(b1)
    projection2 = b2 @ torch.linalg.pinv(b2)
    expected = float(torch.trace(projection1 @ projection2)) / 4

    assert subspace_overlap(b1, b2) == pytest.approx(expected, abs=1e-12)


def test_overlap_special_cases(generator):
    b = torch.randn(30, 4, dtype=F64, generator=generator)
    first_half = torch.zeros(30, 4, dtype=F64)
    first_half[:15] = b[:15]
    second_half = torch.zeros(30, 4, dtype=F64)
    second_half[15:] = b[15:]
    mixed = b @ torch.randn(4, 4, dtype=F64, generator=generator)

    assert subspace_overlap(b, b) == pytest.approx(1.0, abs=1e-12)
    assert subspace_overlap(b, mixed) == pytest.approx(1.0, abs=1e-12)
    assert subspace_overlap(first_half, second_half) == pytest.approx(0.0, abs=1e-12)
    assert subspace_overlap(torch.zeros_like(b), b) == 0.0


def test_overlap_uses_numerical_rank(generator):
    # [X | X] has rank 4, not 8, and its space lies inside that of [X | Y].
    x = torch.randn(40, 4, dtype=F64, generator=generator)
    y = torch.randn(40, 4, dtype=F64, generator=generator)

    repeated = torch.cat([x, x], dim=1)
    combined = torch.cat([x, y], dim=1)

    assert subspace_overlap(repeated, combined) == pytest.approx(1.0, abs=1e-12)
