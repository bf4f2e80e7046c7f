"""Per-block weights for Stable Diffusion UNet adapters: input, middle and output blocks.

Image users weight a style LoRA by UNet block, for example strong in the output blocks that
shape texture and weak in the input blocks that set composition. A :class:`BlockWeight`
gives one input three multipliers, for the modules under ``unet.down_blocks``,
``unet.mid_block`` and ``unet.up_blocks``. The engine turns them into per-module weight
rules (:class:`~adapterhub.compose.options.ModuleWeight`) of weight × multiplier, placed
before the user's ``--module-weight`` rules so that those still win. Modules outside the
three groups (conv_in, time_embedding, text encoders) keep the input's weight.

This module does not import torch: options are validated before tensors are loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from adapterhub.errors import InvalidOptionError

if TYPE_CHECKING:
    from adapterhub.compose.inputs import ComposeInput
    from adapterhub.compose.options import ModuleWeight

# Each block group and the regex of its canonical module names.
BLOCK_GROUPS = (
    ("input", r"unet\.down_blocks\..*"),
    ("middle", r"unet\.mid_block\..*"),
    ("output", r"unet\.up_blocks\..*"),
)
_EXAMPLE = "write e.g. style:0.2,1.0,0.6 (input, middle, output blocks)"


@dataclass(frozen=True)
class BlockWeight:
    """Multipliers of one input's weight on its UNet input, middle and output blocks.

    ``adapter`` is the input as the user named it (its reference or path) or its 1-based
    position.
    """

    adapter: str
    input: float
    middle: float
    output: float

    def __str__(self) -> str:
        return f"{self.adapter}:{self.input:g},{self.middle:g},{self.output:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "input": self.input, "middle": self.middle,
                "output": self.output}

    def multipliers(self) -> tuple[float, float, float]:
        return (self.input, self.middle, self.output)


def parse_block_weight(text: str) -> BlockWeight:
    """Parse ``ADAPTER:IN,MID,OUT`` into a :class:`BlockWeight`.

    The adapter is everything before the last ``:``, so references with a tag
    (``style:v2:0.2,1,0.6``) work. Raises :class:`InvalidOptionError` naming the text when a
    part is missing or a value is not a number.
    """
    adapter, colon, values = text.rpartition(":")
    if not colon or not adapter:
        raise InvalidOptionError(f"block weights {text!r} name no adapter before ':'; {_EXAMPLE}")
    items = values.split(",")
    if len(items) != len(BLOCK_GROUPS):
        raise InvalidOptionError(
            f"block weights {text!r} give {len(items)} values; expected 3, one each for the "
            f"input, middle and output blocks; {_EXAMPLE}"
        )
    numbers = []
    for item in items:
        try:
            numbers.append(float(item))
        except ValueError:
            raise InvalidOptionError(
                f"block weight {item.strip()!r} in {text!r} is not a number; {_EXAMPLE}"
            ) from None
    return BlockWeight(adapter, *numbers)


def as_block_weights(rules: Sequence[Any]) -> tuple[BlockWeight, ...]:
    """Accept BlockWeight objects, ``ADAPTER:IN,MID,OUT`` strings or (adapter, in, mid, out)."""
    converted = []
    for rule in rules or ():
        if isinstance(rule, BlockWeight):
            converted.append(rule)
        elif isinstance(rule, str):
            converted.append(parse_block_weight(rule))
        elif isinstance(rule, (tuple, list)) and len(rule) == 4:
            converted.append(BlockWeight(str(rule[0]), *rule[1:]))
        else:
            raise InvalidOptionError(
                f"block weight {rule!r} is invalid; expected a BlockWeight, an ADAPTER:IN,MID,OUT "
                "string or an (adapter, input, middle, output) tuple"
            )
    return tuple(converted)


def block_weight_problems(rules: Sequence[BlockWeight]) -> list[str]:
    """List the block weights whose multipliers are not finite numbers."""
    problems = []
    for rule in rules:
        values = rule.multipliers()
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values):
            problems.append(f"block weights {list(values)} for {rule.adapter!r} must be finite numbers")
    return problems


def block_rules(
    inputs: Sequence[ComposeInput], weights: Sequence[float], rules: Sequence[BlockWeight]
) -> tuple[ModuleWeight, ...]:
    """Return the module weight rules that apply ``rules`` to ``inputs`` of these weights.

    A rule is emitted only for the block groups the input adapts. Raises
    :class:`InvalidOptionError` when a rule names no input, or an input with no module in
    any UNet block group (a text-encoder-only or non-diffusion adapter).
    """
    import re

    from adapterhub.compose.inputs import input_index
    from adapterhub.compose.options import ModuleWeight

    expanded = []
    problems = []
    for rule in rules:
        index = input_index(inputs, rule.adapter, "--block-weights")
        names = list(inputs[index].adapter.modules)
        label = inputs[index].label
        matched = False
        for (group, pattern), multiplier in zip(BLOCK_GROUPS, rule.multipliers()):
            if any(re.fullmatch(pattern, name) for name in names):
                expanded.append(ModuleWeight(label, pattern, weights[index] * multiplier))
                matched = True
        if not matched:
            problems.append(f"{label} has no module in the UNet's down_blocks, mid_block or up_blocks")
    if problems:
        raise InvalidOptionError(
            "--block-weights apply to Stable Diffusion UNet adapters, but " + "; ".join(problems)
        )
    return tuple(expanded)
