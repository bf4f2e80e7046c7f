"""Per-module weights: each input's weight, replaced on the modules that a rule's regex matches."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

from adapterhub.compose.inputs import ComposeInput, input_index
from adapterhub.compose.options import ModuleWeight
from adapterhub.errors import InvalidOptionError

if TYPE_CHECKING:
    from adapterhub.adapter import LoraModule

Plan = dict[str, list[tuple[int, "LoraModule"]]]


def module_weights(
    inputs: Sequence[ComposeInput],
    plan: Plan,
    weights: Sequence[float],
    rules: Sequence[ModuleWeight],
) -> dict[str, list[float]]:
    """Return, for each module of ``plan``, the weight of each of its members in member order.

    A member takes its input's weight unless a rule for that input fully matches the module
    name; of several matching rules the last one wins. Raises :class:`InvalidOptionError` when a
    rule names no input, or when its pattern matches none of that input's modules (the usual
    sign of a pattern written for ``re.search``, where ``fullmatch`` applies).
    """
    compiled = [(input_index(inputs, rule.adapter, "--module-weight"), re.compile(rule.pattern), rule)
                for rule in rules]
    _check_rules_match(inputs, compiled)

    resolved: dict[str, list[float]] = {}
    for name, members in plan.items():
        member_weights = []
        for index, _ in members:
            weight = weights[index]
            for rule_index, pattern, rule in compiled:
                if rule_index == index and pattern.fullmatch(name):
                    weight = float(rule.weight)
            member_weights.append(weight)
        resolved[name] = member_weights
    return resolved


def _check_rules_match(inputs: Sequence[ComposeInput], compiled) -> None:
    problems = []
    for index, pattern, rule in compiled:
        names = list(inputs[index].adapter.modules)
        if not any(pattern.fullmatch(name) for name in names):
            example = f" such as {names[0]!r}" if names else ""
            problems.append(
                f"module weight pattern {rule.pattern!r} for {inputs[index].label} matches none of "
                f"its {len(names)} modules{example}"
            )
    if problems:
        raise InvalidOptionError(
            "; ".join(problems) + "; the pattern must match the whole module name, e.g. "
            "'.*self_attn.*' rather than 'self_attn'"
        )
