"""The options of a composition, shared by the CLI and the Python API.

:class:`ComposeOptions` validates itself on construction, so the API and the CLI reject the
same values with the same messages. The help text of each option sits beside its field and
the CLI builds its ``--help`` from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from adapterhub.errors import InvalidOptionError

DTYPES = ("float32", "float16", "bfloat16", "float64")


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ComposeOptions:
    """Everything that decides the bytes of a composed adapter, besides its inputs."""

    method: str = _option("cat", "composition method")
    weights: tuple[float, ...] | None = _option(
        None, "one weight per adapter, comma-separated; negative subtracts; default 1 each"
    )
    rank: int | None = _option(None, "target rank for methods that truncate")
    energy: float | None = _option(
        None, "keep the smallest rank per module that retains this share of the squared "
        "singular values, in (0, 1]; writes rank_pattern"
    )
    dtype: str | None = _option(
        None, f"dtype of the written tensors ({', '.join(DTYPES)}); default: the inputs'"
    )
    device: str | None = _option(None, "torch device for the arithmetic; default cuda if available")
    allow_base_mismatch: bool = _option(
        False, "compose adapters whose configs name different base models"
    )
    keep_head: str | None = _option(
        None, "input (name, path or 1-based position) whose modules_to_save heads win a conflict"
    )

    def __post_init__(self) -> None:
        from adapterhub.compose.methods import METHODS

        problems = []
        if self.method not in METHODS:
            problems.append(_unknown_method_message(self.method, METHODS))
        method = METHODS.get(self.method)
        if method is not None and method.truncates:
            if (self.rank is None) == (self.energy is None):
                problems.append(f"method {self.method!r} needs exactly one of --rank or --energy")
        elif method is not None and (self.rank is not None or self.energy is not None):
            problems.append(f"method {self.method!r} does not truncate; drop --rank and --energy")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 1):
            problems.append(f"rank {self.rank!r} is invalid; expected a positive integer")
        if self.energy is not None and not (0 < self.energy <= 1):
            problems.append(f"energy {self.energy!r} is invalid; expected a number in (0, 1]")
        if self.weights is not None and not all(math.isfinite(w) for w in self.weights):
            problems.append(f"weights {list(self.weights)} must be finite numbers")
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is invalid; choose one of: {', '.join(DTYPES)}")
        if problems:
            raise InvalidOptionError("; ".join(problems))

    def weights_for(self, count: int) -> tuple[float, ...]:
        """Return one weight per input; raises when the user gave a different number."""
        if self.weights is None:
            return (1.0,) * count
        if len(self.weights) != count:
            raise InvalidOptionError(
                f"{len(self.weights)} weights given for {count} adapters; pass one weight per "
                "adapter, e.g. --weights " + ",".join(["1.0"] * count)
            )
        return self.weights

    def parameters(self) -> dict[str, Any]:
        """Return the options that belong in the recorded recipe."""
        recorded = {}
        for option in fields(self):
            if option.name in ("device", "allow_base_mismatch"):
                continue
            value = getattr(self, option.name)
            if value is not None:
                recorded[option.name] = list(value) if isinstance(value, tuple) else value
        return recorded


def help_text(name: str) -> str:
    """Return the help text of the :class:`ComposeOptions` field ``name``."""
    return next(option.metadata["help"] for option in fields(ComposeOptions) if option.name == name)


def _unknown_method_message(name: str, methods: dict) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(methods), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown method {name!r}{hint}; choose one of: {', '.join(methods)}"


def parse_weights(text: str) -> tuple[float, ...]:
    """Parse ``"1.0,0.5"`` into weights; raises naming the item that is not a number."""
    weights = []
    for item in text.split(","):
        try:
            weights.append(float(item))
        except ValueError:
            raise InvalidOptionError(
                f"weight {item.strip()!r} in {text!r} is not a number; write e.g. 1.0,0.5"
            ) from None
    return tuple(weights)
