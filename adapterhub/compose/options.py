"""The options of a composition, shared by the CLI and the Python API.

:class:`ComposeOptions` validates itself on construction, so the API and the CLI reject the
same values with the same messages. The help text of each option sits beside its field and
the CLI builds its ``--help`` from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from adapterhub.compose.blocks import BlockWeight, as_block_weights, block_weight_problems
from adapterhub.errors import InvalidOptionError

DTYPES = ("float32", "float16", "bfloat16", "float64")
MAJORITY_SIGN_METHODS = ("total", "frequency")


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModuleWeight:
    """A weight that replaces one input's weight on the modules whose names match a regex.

    ``adapter`` is the input as the user named it (its reference or path) or its 1-based
    position. ``pattern`` must match the whole module name (``re.fullmatch``), for example
    ``.*self_attn.*`` or ``model\\.layers\\.(2[0-9]|3[01])\\..*``.
    """

    adapter: str
    pattern: str
    weight: float

    def __str__(self) -> str:
        return f"{self.adapter}:{self.pattern}={self.weight:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "pattern": self.pattern, "weight": self.weight}


@dataclass(frozen=True)
class ComposeOptions:
    """Everything that decides the bytes of a composed adapter, besides its inputs.

    Method parameters that the chosen method does not use must stay None. Parameters with a
    default (``majority_sign`` "total", ``seed`` 0) are filled in for the methods that use
    them, so the recorded recipe always states them.
    """

    method: str = _option("cat", "composition method")
    weights: tuple[float, ...] | None = _option(
        None, "one weight per adapter, comma-separated; negative subtracts; default 1 each"
    )
    module_weights: tuple[ModuleWeight, ...] = _option(
        (), "ADAPTER:REGEX=WEIGHT: use WEIGHT for ADAPTER (name, path or 1-based position) on "
        "the modules whose whole name matches REGEX; repeat the option, the last match wins"
    )
    block_weights: tuple[BlockWeight, ...] = _option(
        (), "ADAPTER:IN,MID,OUT: multiply ADAPTER's weight by IN, MID and OUT on the modules of "
        "the SD UNet's input (down_blocks), middle (mid_block) and output (up_blocks) blocks; "
        "--module-weight rules win over it"
    )
    rank: int | None = _option(None, "target rank for methods that truncate")
    energy: float | None = _option(
        None, "keep the smallest rank per module that retains this share of the squared "
        "singular values, in (0, 1]; writes rank_pattern"
    )
    density: float | None = _option(
        None, "share of each update's entries that ties, dare_* and magnitude_prune keep, in (0, 1]"
    )
    majority_sign: str | None = _option(
        None, "how ties and dare_ties elect each entry's sign: total (sign of the sum, "
        "default) or frequency (the sign most updates have)"
    )
    seed: int | None = _option(
        None, "seed of the random drop of dare_linear and dare_ties (default 0); the same "
        "seed gives the same bytes"
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

        object.__setattr__(self, "module_weights", _as_module_weights(self.module_weights))
        object.__setattr__(self, "block_weights", as_block_weights(self.block_weights))
        problems = []
        method = METHODS.get(self.method)
        if method is None:
            problems.append(_unknown_method_message(self.method, METHODS))
        else:
            problems += _truncation_problems(self, method.truncates)
            problems += _parameter_problems(self, method)
        problems += _value_problems(self)
        if problems:
            raise InvalidOptionError("; ".join(problems))

    def weights_for(self, count: int) -> tuple[float, ...]:
        """Return one weight per input; raises when the user gave a different number."""
        if self.weights is None:
            return (1.0,) * count
        if len(self.weights) != count:
            raise InvalidOptionError(
                f"{_count(len(self.weights), 'weight')} given for {_count(count, 'adapter')}; "
                "pass one weight per adapter, e.g. --weights " + ",".join(["1.0"] * count)
            )
        return self.weights

    def parameters(self) -> dict[str, Any]:
        """Return the options that belong in the recorded recipe."""
        recorded: dict[str, Any] = {}
        for option in fields(self):
            if option.name in ("device", "allow_base_mismatch"):
                continue
            value = getattr(self, option.name)
            if option.name in ("module_weights", "block_weights"):
                if value:
                    recorded[option.name] = [rule.to_dict() for rule in value]
            elif value is not None:
                recorded[option.name] = list(value) if isinstance(value, tuple) else value
        return recorded


def _truncation_problems(options: ComposeOptions, truncates: bool) -> list[str]:
    if truncates and (options.rank is None) == (options.energy is None):
        return [f"method {options.method!r} needs exactly one of --rank or --energy"]
    if not truncates and (options.rank is not None or options.energy is not None):
        return [f"method {options.method!r} does not truncate; drop --rank and --energy"]
    return []


def _parameter_problems(options: ComposeOptions, method) -> list[str]:
    """Check the method parameters against what ``method`` takes, and fill in defaults."""
    problems = []
    taken = {parameter.name: parameter for parameter in method.parameters}
    for name in ("density", "majority_sign", "seed"):
        flag = "--" + name.replace("_", "-")
        value = getattr(options, name)
        parameter = taken.get(name)
        if parameter is None and value is not None:
            problems.append(f"method {options.method!r} does not use {flag}; drop it")
        elif parameter is not None and value is None:
            if parameter.required:
                problems.append(f"method {options.method!r} needs {flag} ({parameter.hint})")
            else:
                object.__setattr__(options, name, parameter.default)
    return problems


def _value_problems(options: ComposeOptions) -> list[str]:
    problems = []
    rank = options.rank
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        problems.append(f"rank {rank!r} is invalid; expected a positive integer")
    if options.energy is not None and not (0 < options.energy <= 1):
        problems.append(f"energy {options.energy!r} is invalid; expected a number in (0, 1]")
    if options.density is not None and not _is_share(options.density):
        problems.append(f"density {options.density!r} is invalid; expected a number in (0, 1]")
    sign = options.majority_sign
    if sign is not None and sign not in MAJORITY_SIGN_METHODS:
        problems.append(
            f"majority sign method {sign!r} is invalid; choose one of: "
            + ", ".join(MAJORITY_SIGN_METHODS)
        )
    seed = options.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        problems.append(f"seed {seed!r} is invalid; expected a non-negative integer")
    if options.weights is not None and not all(math.isfinite(w) for w in options.weights):
        problems.append(f"weights {list(options.weights)} must be finite numbers")
    problems += _module_weight_problems(options.module_weights)
    problems += block_weight_problems(options.block_weights)
    if options.dtype is not None and options.dtype not in DTYPES:
        problems.append(f"dtype {options.dtype!r} is invalid; choose one of: {', '.join(DTYPES)}")
    return problems


def _is_share(value: Any) -> bool:
    # The chained comparison is False for NaN, so NaN is rejected too.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def _as_module_weights(rules: Sequence[Any]) -> tuple[ModuleWeight, ...]:
    """Accept ModuleWeight objects or (adapter, pattern, weight) triples from API callers."""
    converted = []
    for rule in rules or ():
        if isinstance(rule, ModuleWeight):
            converted.append(rule)
        elif isinstance(rule, (tuple, list)) and len(rule) == 3:
            converted.append(ModuleWeight(str(rule[0]), str(rule[1]), rule[2]))
        else:
            raise InvalidOptionError(
                f"module weight {rule!r} is invalid; expected a ModuleWeight or an "
                "(adapter, pattern, weight) triple"
            )
    return tuple(converted)


def _module_weight_problems(rules: Sequence[ModuleWeight]) -> list[str]:
    problems = []
    for rule in rules:
        try:
            re.compile(rule.pattern)
        except re.error as exc:
            problems.append(
                f"module weight pattern {rule.pattern!r} is not a valid regular expression "
                f"({exc.msg} at position {exc.pos})"
            )
        weight = rule.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            problems.append(f"module weight {weight!r} for {rule.pattern!r} must be a finite number")
    return problems


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


def parse_module_weight(text: str, labels: Sequence[str] = ()) -> ModuleWeight:
    """Parse ``ADAPTER:REGEX=WEIGHT`` into a :class:`ModuleWeight`.

    The weight follows the last ``=``. The adapter is the longest of ``labels`` that the text
    starts with, followed by ``:``, so references with a tag (``style:v2``) and paths with
    colons work; otherwise it is the text before the first ``:``. Raises
    :class:`InvalidOptionError` naming the text when a part is missing or the weight is not
    a number.
    """
    example = "write e.g. style:.*self_attn.*=0.3"
    head, equals, weight_text = text.rpartition("=")
    if not equals:
        raise InvalidOptionError(f"module weight {text!r} has no '=WEIGHT' at the end; {example}")
    try:
        weight = float(weight_text)
    except ValueError:
        raise InvalidOptionError(
            f"module weight {text!r}: {weight_text!r} after the last '=' is not a number; {example}"
        ) from None

    prefixes = sorted((label for label in labels if head.startswith(label + ":")), key=len)
    if prefixes:
        adapter, pattern = prefixes[-1], head[len(prefixes[-1]) + 1:]
    else:
        adapter, _, pattern = head.partition(":")
    if not adapter or not pattern:
        raise InvalidOptionError(
            f"module weight {text!r} needs an adapter and a pattern before '='; {example}"
        )
    return ModuleWeight(adapter, pattern, weight)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
