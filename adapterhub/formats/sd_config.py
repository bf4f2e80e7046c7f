"""The PEFT config that Stable Diffusion formats build for the adapters they read.

kohya, LyCORIS and diffusers files store a rank and an alpha per module (or none), not a
PEFT config. Their readers collect ``{canonical module name: (rank, alpha)}`` and turn it
into a config: ``r`` and ``lora_alpha`` are the most common values, and every module that
differs gets an entry in ``rank_pattern`` or ``alpha_pattern`` under its full canonical
name. The writers go the other way through :func:`module_alphas`, so a per-module alpha
survives every conversion.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Mapping

from adapterhub.adapter import pattern_value

# The largest number of (key, module) regex matches spent on checking plain pattern keys.
_CHECKED_PATTERN_PAIRS = 50_000

if TYPE_CHECKING:
    from adapterhub.adapter import LoraModule


def build_config(
    specs: Mapping[str, tuple[int, float]], peft_type: str = "LORA", use_dora: bool = False
) -> dict[str, Any]:
    """Return a PEFT config that gives each module of ``specs`` its ``(rank, alpha)``."""
    rank = most_common(rank for rank, _ in specs.values())
    alpha = most_common(alpha for _, alpha in specs.values())
    return {
        "peft_type": peft_type,
        "base_model_name_or_path": None,
        "task_type": None,
        "r": rank,
        "lora_alpha": plain_number(alpha),
        "rank_pattern": exact_patterns({n: r for n, (r, _) in specs.items()}, rank),
        "alpha_pattern": exact_patterns({n: a for n, (_, a) in specs.items()}, alpha),
        "target_modules": sorted(specs),
        "use_rslora": False,
        "use_dora": use_dora,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
    }


def exact_patterns(values: Mapping[str, Any], default: Any, anchor: str = "") -> dict[str, Any]:
    """Return PEFT pattern entries for the modules whose value is not ``default``.

    PEFT reads each key as a regex matched against the end of a module name. Keys are the
    plain names when a check shows that none of them also matches another module. Otherwise,
    and for large configs where that check would cost seconds, every key is escaped and
    anchored with ``^``, which matches its own name only. ``anchor`` (``^``) pins plain keys
    to the start of the name, as diffusers writes them.
    """
    differing = {name: plain_number(value) for name, value in values.items() if value != default}
    if len(differing) * len(values) <= _CHECKED_PATTERN_PAIRS:
        pattern = {anchor + name: value for name, value in differing.items()}
        if all(pattern_value(pattern, name, default) == values[name] for name in values):
            return pattern
    return {"^" + re.escape(name): value for name, value in differing.items()}


def module_alphas(modules: Mapping[str, LoraModule]) -> dict[str, float]:
    """Return the alpha to write per module so that alpha / rank is the module's scaling.

    That is the module's own alpha for plain LoRA; for rsLoRA and AdaLoRA, whose scaling is
    not alpha / rank, it is scaling × rank.
    """
    alphas = {}
    for name, module in modules.items():
        if module.alpha / module.rank == module.scale:
            alphas[name] = module.alpha
        else:
            alphas[name] = module.scale * module.rank
    return alphas


def most_common(values) -> Any:
    counts = Counter(values)
    if not counts:
        return None
    # Ties go to the smaller value, so the choice does not depend on module order.
    return min(counts, key=lambda value: (-counts[value], value))


def plain_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
