"""The PEFT config of a composed adapter.

Composition bakes each module's scaling into its factors, so the result is plain LoRA with
α = r for every module (s = 1); modules whose rank differs from ``r`` get ``rank_pattern`` and
``alpha_pattern`` entries that PEFT reloads.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from adapterhub.adapter import LoraAdapter, pattern_value

# Config fields that decide which modules of the base model PEFT adapts.
_SELECTION_FIELDS = ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")
# Fields carried over from the first input as they are.
_INHERITED_FIELDS = ("base_model_name_or_path", "task_type", "bias", "lora_dropout", "revision")


def composed_config(
    adapters: Sequence[LoraAdapter], ranks: dict[str, int], head_keys: Sequence[str]
) -> dict[str, Any]:
    """Return the PEFT LoRA config for composed modules of the given ``ranks``.

    ``head_keys`` are the ``modules_to_save`` tensors kept in the result.
    """
    rank = max(ranks.values())
    config: dict[str, Any] = {
        key: adapters[0].config.get(key) for key in _INHERITED_FIELDS if key in adapters[0].config
    }
    config.setdefault("bias", "none")
    config.update(
        peft_type="LORA",
        r=rank,
        lora_alpha=rank,
        rank_pattern=_pattern(ranks, rank),
        alpha_pattern=_pattern(ranks, rank),
        use_rslora=False,
        use_dora=False,
        inference_mode=True,
        init_lora_weights=True,
        # fan_in_fan_out describes the base layer (GPT-2's Conv1D), not the factors, so an input
        # that sets it was trained on such a layer.
        fan_in_fan_out=any(bool(a.config.get("fan_in_fan_out")) for a in adapters),
        modules_to_save=_modules_to_save(adapters, head_keys),
    )
    config.update(_selection(adapters, sorted(ranks)))
    return config


def _pattern(ranks: dict[str, int], rank: int) -> dict[str, int]:
    pattern = {name: value for name, value in ranks.items() if value != rank}
    # PEFT reads each key as a regex matched against the end of module names; a plain name
    # can in principle match another module (``.`` matches any character), so check it.
    for name in ranks:
        if pattern_value(pattern, name, rank) != ranks[name]:
            return {re.escape(key): value for key, value in pattern.items()}
    return pattern


def _selection(adapters: Sequence[LoraAdapter], names: list[str]) -> dict[str, Any]:
    """Return target-selection fields that match exactly the union of the adapted modules."""
    selections = [tuple(repr(a.config.get(key)) for key in _SELECTION_FIELDS) for a in adapters]
    if len(set(selections)) == 1 and adapters[0].config.get("target_modules"):
        return {key: adapters[0].config.get(key) for key in _SELECTION_FIELDS}

    targets = [a.config.get("target_modules") for a in adapters]
    uses_layers = any(a.config.get(key) for a in adapters for key in _SELECTION_FIELDS[1:])
    if uses_layers or not all(targets):
        # Without the base model we cannot widen a pattern safely: name every module.
        return {"target_modules": names}
    if all(isinstance(target, list) for target in targets):
        return {"target_modules": sorted({entry for target in targets for entry in target})}
    return {"target_modules": "|".join(f"(?:{_as_regex(target)})" for target in targets)}


def _as_regex(target: str | list[str]) -> str:
    if isinstance(target, str):
        return target
    # A list entry matches a module named exactly so, or ending in "." plus the entry.
    return "|".join(rf"(?:.*\.)?{re.escape(entry)}" for entry in target)


def _modules_to_save(adapters: Sequence[LoraAdapter], head_keys: Sequence[str]) -> list[str] | None:
    if not head_keys:
        return None
    names: list[str] = []
    for adapter in adapters:
        for name in adapter.config.get("modules_to_save") or []:
            if name not in names:
                names.append(name)
    return names or None
