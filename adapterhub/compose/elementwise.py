"""Element-wise merges of dense updates: TIES, DARE and magnitude pruning.

Each function takes the dense updates ΔW_i = s_i B_i A_i of one module (PEFT's scaling
applied, the user's weight not) and the weights w_i, and returns the merged dense update. The
definitions follow ``peft.utils.merge_utils`` (PEFT 0.21) as PEFT applies them to ΔW in its
``*_svd`` combination types:

- magnitude pruning keeps the ``int(density · numel)`` entries of largest magnitude of each
  ΔW_i and zeroes the rest (TIES-Merging's "trim", Yadav et al. 2023);
- random dropping keeps each entry with probability ``density`` and divides the kept ones by
  ``density`` (DARE, Yu et al. 2023);
- the sign of each entry is elected from the pruned, unweighted updates: the sign of their sum
  (``total``) or of the sum of their signs (``frequency``), with 0 counting as +;
- the disjoint merge averages, per entry, the weighted updates whose sign agrees with the
  elected one.

A density of 1 or more prunes nothing, as in PEFT. The functions hold the pruned updates of
one module plus two accumulators of its shape, never more.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import Tensor

# Entries sampled to bracket the magnitude threshold before the exact selection.
_THRESHOLD_SAMPLE = 1 << 16


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """Keep the ``int(density · numel)`` entries of ``delta`` with the largest magnitude."""
    if density >= 1:
        return delta
    keep = top_magnitude_mask(delta, int(density * delta.numel()))
    return torch.where(keep, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))


def random_drop(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability ``density`` and rescale the kept ones by 1/density.

    The mask is ``torch.rand(delta.shape, generator=generator) < density`` in the dtype and on
    the device of ``delta``, so the same generator state gives the same mask.
    """
    if density >= 1:
        return delta
    draws = torch.rand(delta.shape, generator=generator, dtype=delta.dtype, device=delta.device)
    zero = torch.zeros((), dtype=delta.dtype, device=delta.device)
    return torch.where(draws < density, delta / density, zero)


def weighted_sum(deltas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Return Σ w_i ΔW_i (PEFT's task_arithmetic)."""
    total = torch.zeros_like(deltas[0])
    for delta, weight in zip(deltas, weights):
        total.add_(delta, alpha=weight)
    return total


def disjoint_merge(pruned: Sequence[Tensor], weights: Sequence[float], majority_sign: str) -> Tensor:
    """Elect a sign per entry from the pruned updates, then average the weighted agreeing ones.

    ``majority_sign`` is ``total`` or ``frequency``. An entry that no update agrees with is 0.
    """
    votes = torch.zeros_like(pruned[0])
    for delta in pruned:
        votes.add_(delta if majority_sign == "total" else delta.sign())
    elected = torch.where(votes >= 0, 1.0, -1.0).to(votes.dtype)

    merged = torch.zeros_like(votes)
    agreeing = votes  # reused: the votes are no longer needed once the sign is elected
    agreeing.zero_()
    for delta, weight in zip(pruned, weights):
        agrees = delta.sign() == elected
        merged.add_(torch.where(agrees, delta, 0.0), alpha=weight)
        agreeing.add_(agrees.to(agreeing.dtype))
    return merged.div_(agreeing.clamp_(min=1.0))


def ties(deltas: Sequence[Tensor], weights: Sequence[float], density: float, majority_sign: str) -> Tensor:
    """TIES-Merging: magnitude pruning, sign election, disjoint merge."""
    pruned = [magnitude_prune(delta, density) for delta in deltas]
    return disjoint_merge(pruned, weights, majority_sign)


def dare_linear(deltas: Sequence[Tensor], weights: Sequence[float], density: float,
                generator: torch.Generator) -> Tensor:
    """DARE with a weighted sum: random drop and rescale, then Σ w_i ΔW_i."""
    return weighted_sum([random_drop(delta, density, generator) for delta in deltas], weights)


def dare_ties(deltas: Sequence[Tensor], weights: Sequence[float], density: float, majority_sign: str,
              generator: torch.Generator) -> Tensor:
    """DARE with TIES's sign election and disjoint merge."""
    dropped = [random_drop(delta, density, generator) for delta in deltas]
    return disjoint_merge(dropped, weights, majority_sign)


def magnitude_prune_merge(deltas: Sequence[Tensor], weights: Sequence[float], density: float) -> Tensor:
    """Magnitude pruning of each update, then Σ w_i ΔW_i."""
    return weighted_sum([magnitude_prune(delta, density) for delta in deltas], weights)


def module_seed(seed: int, module: str) -> int:
    """Derive the seed of one module's random drop from the user's seed and the module name.

    The first 8 bytes of sha256(f"{seed}:{module}"), big-endian, with the top bit cleared:
    every module gets its own stream, and the seed of a module does not depend on which
    other modules are composed.
    """
    digest = hashlib.sha256(f"{seed}:{module}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def module_generator(seed: int, module: str, device: torch.device) -> torch.Generator:
    """Return a generator on ``device`` seeded with :func:`module_seed`."""
    return torch.Generator(device=device).manual_seed(module_seed(seed, module))


def top_magnitude_mask(values: Tensor, count: int) -> Tensor:
    """Return a boolean mask of the ``count`` entries of largest magnitude.

    Exactly ``count`` entries are selected. Among entries of equal magnitude at the threshold,
    the first ones in row-major order win. The threshold comes from an exact selection among
    the entries in a bracket estimated from a fixed pseudo-random sample, which replaces a
    top-k over the whole matrix; the sample only decides the speed, never the result.
    """
    magnitudes = values.abs().reshape(-1)
    total = magnitudes.numel()
    if count >= total:
        return torch.ones_like(values, dtype=torch.bool)
    if count <= 0:
        return torch.zeros_like(values, dtype=torch.bool)

    threshold = _kth_largest(magnitudes, count)
    keep = magnitudes > threshold
    missing = count - int(keep.sum())
    if missing > 0:
        tied = torch.nonzero(magnitudes == threshold).reshape(-1)[:missing]
        keep[tied] = True
    return keep.reshape(values.shape)


def _kth_largest(magnitudes: Tensor, count: int) -> Tensor:
    """Return the ``count``-th largest value of a 1-D tensor."""
    total = magnitudes.numel()
    if total <= 4 * _THRESHOLD_SAMPLE:
        return torch.kthvalue(magnitudes, total - count + 1).values

    generator = torch.Generator(device=magnitudes.device).manual_seed(0)
    picks = torch.randint(total, (_THRESHOLD_SAMPLE,), generator=generator, device=magnitudes.device)
    sample = torch.sort(magnitudes[picks]).values
    # The count-th largest sits near quantile 1 - count/total of the sample. Ten standard
    # deviations of a sample quantile on either side make a miss practically impossible.
    centre = (1 - count / total) * (_THRESHOLD_SAMPLE - 1)
    margin = 10 * (_THRESHOLD_SAMPLE ** 0.5) / 2 + 2
    low = sample[max(int(centre - margin), 0)]
    high = sample[min(int(centre + margin) + 1, _THRESHOLD_SAMPLE - 1)]

    above = int((magnitudes > high).sum())
    inside = magnitudes[(magnitudes >= low) & (magnitudes <= high)]
    rank_inside = count - above  # the wanted value is the rank_inside-th largest in the bracket
    if not 1 <= rank_inside <= inside.numel():
        return torch.kthvalue(magnitudes, total - count + 1).values
    return torch.kthvalue(inside, inside.numel() - rank_inside + 1).values
