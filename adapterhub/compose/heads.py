"""``modules_to_save`` heads and other full tensors that travel beside the LoRA factors.

Heads are whole weights (a classifier layer), so they cannot be summed like updates: identical
heads pass through, a head that only one adapter has is kept, and heads that differ are a
conflict the user resolves with ``--keep-head``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from adapterhub.adapter import module_name
from adapterhub.compose.inputs import input_index
from adapterhub.errors import HeadConflictError

if TYPE_CHECKING:
    from adapterhub.compose.inputs import ComposeInput


def merge_heads(inputs: Sequence[ComposeInput], keep_head: str | None) -> dict[str, torch.Tensor]:
    """Return the full tensors of the composed adapter.

    Raises :class:`HeadConflictError` naming each head and the adapters that disagree, unless
    ``keep_head`` names the input whose heads win.
    """
    keeper = _keeper_index(inputs, keep_head)
    candidates: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for index, item in enumerate(inputs):
        for key in item.adapter.extra_keys:
            candidates.setdefault(key, []).append((index, item.adapter.tensors[key]))

    merged: dict[str, torch.Tensor] = {}
    conflicts: dict[str, dict[str, list[int]]] = {}
    for key, versions in sorted(candidates.items()):
        first = versions[0][1]
        if all(_same(first, tensor) for _, tensor in versions[1:]):
            merged[key] = first
            continue
        chosen = [tensor for index, tensor in versions if index == keeper]
        if chosen:
            merged[key] = chosen[0]
        else:
            head, parameter = module_name(key).rsplit(".", 1)
            shapes = conflicts.setdefault(head, {})
            for index, tensor in versions:
                # The weight's shape distinguishes heads best, so other parameters are used only without it.
                if parameter == "weight" or inputs[index].label not in shapes:
                    shapes[inputs[index].label] = list(tensor.shape)
    if conflicts:
        raise HeadConflictError(_conflict_message(conflicts, inputs))
    return merged


def _same(first: torch.Tensor, second: torch.Tensor) -> bool:
    return first.shape == second.shape and first.dtype == second.dtype and torch.equal(first, second)


def _keeper_index(inputs: Sequence[ComposeInput], keep_head: str | None) -> int | None:
    if keep_head is None:
        return None
    return input_index(inputs, keep_head, "--keep-head")


def _conflict_message(conflicts: dict[str, dict[str, list[int]]], inputs: Sequence[ComposeInput]) -> str:
    listing = ", ".join(
        f"{head} ({', '.join(f'{label} {shape}' for label, shape in shapes.items())})"
        for head, shapes in conflicts.items()
    )
    return (
        f"the adapters save different modules_to_save heads: {listing}; heads are whole "
        "weights and cannot be summed, so choose one with --keep-head "
        f"{inputs[0].label}"
    )
