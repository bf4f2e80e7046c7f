"""The inputs of a composition and how options name one of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from adapterhub.adapter import LoraAdapter
from adapterhub.errors import InvalidOptionError


@dataclass(frozen=True)
class ComposeInput:
    """One adapter to compose, with the label the user gave it and its artifact id."""

    adapter: LoraAdapter
    label: str
    artifact_id: str


def input_index(inputs: Sequence[ComposeInput], name: str, option: str) -> int:
    """Return the index of the input that ``name`` refers to: its label or 1-based position.

    ``option`` is the flag that named it, for the message. Raises
    :class:`InvalidOptionError` listing the labels when no input matches.
    """
    labels = [item.label for item in inputs]
    if name in labels:
        return labels.index(name)
    if name.isdigit() and 1 <= int(name) <= len(inputs):
        return int(name) - 1
    raise InvalidOptionError(
        f"{option} {name!r} names no input; use one of: {', '.join(labels)} "
        f"or a position from 1 to {len(inputs)}"
    )
