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
# Entries per block of the element-wise passes on the CPU. A block's working set stays in
# cache, where a pass over a whole 4096 × 11008 update streams from memory. TIES of two such
# updates took 3.4 s unblocked and 1.7 s in blocks of 256K entries, the best of 64K to 1M
# (2-core AMD EPYC, torch 2.13, two threads).
_CPU_BLOCK = 1 << 18


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """Keep the ``int(density · numel)`` entries of ``delta`` with the largest magnitude."""
    if density >= 1:
        return delta
    count = int(density * delta.numel())
    if count <= 0:
        return torch.zeros_like(delta)

    pruned = torch.empty_like(delta)
    for keep, source, target in _top_magnitude_blocks(delta, count, pruned):
        torch.where(keep, source, _zero(source), out=target)
    return pruned


def random_drop(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability ``density`` and rescale the kept ones by 1/density.

    The mask is ``torch.rand(delta.shape, generator=generator) < density`` in the dtype and on
    the device of ``delta``, so the same generator state gives the same mask.
    """
    if density >= 1:
        return delta
    draws = torch.rand(delta.shape, generator=generator, dtype=delta.dtype, device=delta.device)
    for source, draw in _blocks(delta, draws):
        # The dropped result overwrites the draws block by block.
        torch.where(draw < density, source / density, _zero(source), out=draw)
    return draws


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
    merged = torch.empty_like(pruned[0])
    for target, *parts in _blocks(merged, *pruned):
        votes = parts[0].clone() if majority_sign == "total" else parts[0].sign()
        for part in parts[1:]:
            votes.add_(part if majority_sign == "total" else part.sign())
        positive = votes >= 0  # the elected sign: + where the votes are 0 or more

        agreeing = votes  # reused: the votes are no longer needed once the sign is elected
        agreeing.zero_()
        target.zero_()
        for part, weight in zip(parts, weights):
            agrees = torch.where(positive, part > 0, part < 0)
            target.add_(torch.where(agrees, part, _zero(part)), alpha=weight)
            agreeing.add_(agrees.to(agreeing.dtype))
        target.div_(agreeing.clamp_(min=1.0))
    return merged


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
    the first ones in row-major order win.
    """
    total = values.numel()
    if count >= total:
        return torch.ones_like(values, dtype=torch.bool)
    if count <= 0:
        return torch.zeros_like(values, dtype=torch.bool)

    mask = torch.empty_like(values, dtype=torch.bool)
    for keep, _, target in _top_magnitude_blocks(values, count, mask):
        target.copy_(keep)
    return mask


def _top_magnitude_blocks(values: Tensor, count: int, *others: Tensor):
    """Yield, block by block, the keep mask of the ``count`` largest magnitudes of ``values``.

    Each item is ``(keep, values block, *blocks of others)``, ``count`` between 1 and the
    number of entries. Entries above the threshold are kept, and of those equal to it the
    first ones in row-major order, as many as the count needs.
    """
    threshold, tied = _magnitude_threshold(values, count)
    for block, *rest in _blocks(values, *others):
        magnitudes = block.abs()
        keep = magnitudes > threshold
        if tied > 0:
            equal = torch.nonzero(magnitudes == threshold).reshape(-1)[:tied]
            keep[equal] = True
            tied -= equal.numel()
        yield (keep, block, *rest)


def _magnitude_threshold(values: Tensor, count: int) -> tuple[Tensor, int]:
    """Return the ``count``-th largest magnitude t of ``values`` and how many |x| = t to keep.

    ``count`` is between 1 and the number of entries. The threshold is selected exactly among
    the entries in a bracket estimated from a fixed pseudo-random sample, which replaces a
    selection over the whole matrix. The sample only decides the speed, never the result.
    """
    flat = values.reshape(-1)
    total = flat.numel()
    if total <= 4 * _THRESHOLD_SAMPLE:
        return _exact_threshold(flat.abs(), count)

    generator = torch.Generator(device=flat.device).manual_seed(0)
    picks = torch.randint(total, (_THRESHOLD_SAMPLE,), generator=generator, device=flat.device)
    sample = torch.sort(flat[picks].abs()).values
    # The count-th largest sits near quantile 1 - count/total of the sample. Ten standard
    # deviations of a sample quantile on either side make a miss practically impossible.
    centre = (1 - count / total) * (_THRESHOLD_SAMPLE - 1)
    margin = 10 * (_THRESHOLD_SAMPLE ** 0.5) / 2 + 2
    low = sample[max(int(centre - margin), 0)]
    high = sample[min(int(centre + margin) + 1, _THRESHOLD_SAMPLE - 1)]

    above = torch.zeros((), dtype=torch.int64, device=flat.device)
    bracket = []
    for (block,) in _blocks(flat):
        magnitudes = block.abs()
        above += (magnitudes > high).sum()
        bracket.append(magnitudes[(magnitudes >= low) & (magnitudes <= high)])
    inside = torch.cat(bracket)
    rank_inside = count - int(above)  # the wanted value is the rank_inside-th largest in the bracket
    if not 1 <= rank_inside <= inside.numel():
        return _exact_threshold(flat.abs(), count)

    threshold = torch.kthvalue(inside, inside.numel() - rank_inside + 1).values
    greater = int(above) + int((inside > threshold).sum())
    return threshold, count - greater


def _exact_threshold(magnitudes: Tensor, count: int) -> tuple[Tensor, int]:
    threshold = torch.kthvalue(magnitudes, magnitudes.numel() - count + 1).values
    return threshold, count - int((magnitudes > threshold).sum())


def _blocks(*tensors: Tensor):
    """Yield lists of equal flat ranges of same-shaped contiguous tensors, block by block.

    On the CPU the blocks have ``_CPU_BLOCK`` entries. Elsewhere one block covers everything,
    because a GPU gains nothing from it and would pay a launch per block.
    """
    flats = [tensor.reshape(-1) for tensor in tensors]
    total = flats[0].numel()
    size = _CPU_BLOCK if flats[0].device.type == "cpu" else max(total, 1)
    for start in range(0, total, size):
        yield [flat[start:start + size] for flat in flats]


def _zero(like: Tensor) -> Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)
