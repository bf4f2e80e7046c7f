"""The composition engine: checks the inputs, plans per module, runs a method, builds the result.

The engine works on :class:`~adapterhub.adapter.LoraAdapter` objects in memory and knows
nothing of the store; :mod:`adapterhub.library` resolves references and records the result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from adapterhub.adapter import PEFT_KEY_PREFIX, LoraAdapter, LoraModule
from adapterhub.compose.config import composed_config
from adapterhub.compose.heads import merge_heads
from adapterhub.compose.methods import METHODS, ModuleResult, Truncation
from adapterhub.compose.options import ComposeOptions
from adapterhub.errors import (
    BaseModelMismatchError,
    ShapeMismatchError,
    UnsupportedCompositionError,
)

logger = logging.getLogger(__name__)

LINEAGE_KEY = "adapterhub.lineage"


@dataclass(frozen=True)
class ComposeInput:
    """One adapter to compose, with the label the user gave it and its artifact id."""

    adapter: LoraAdapter
    label: str
    artifact_id: str


@dataclass(frozen=True)
class ComposeResult:
    """The composed adapter and the recipe recorded in it."""

    adapter: LoraAdapter
    lineage: dict[str, Any]


def compose(
    inputs: Sequence[ComposeInput],
    options: ComposeOptions,
    progress: Callable[[int], None] | None = None,
) -> ComposeResult:
    """Compose ``inputs`` with ``options`` into a new PEFT LoRA adapter.

    Raises :class:`UnsupportedCompositionError` for DoRA and ``lora_bias`` adapters,
    :class:`BaseModelMismatchError` for different base models (unless allowed),
    :class:`ShapeMismatchError` when one module has different shapes, and
    :class:`HeadConflictError` for differing ``modules_to_save`` heads. ``progress`` is called
    with the number of modules finished after each one.
    """
    weights = options.weights_for(len(inputs))
    check_composable(inputs)
    check_base_models(inputs, options.allow_base_mismatch)
    plan = plan_modules(inputs)

    device = resolve_device(options.device)
    method = METHODS[options.method]
    truncation = Truncation(rank=options.rank, energy=options.energy)
    out_dtype = _output_dtype(inputs, options.dtype)

    tensors: dict[str, torch.Tensor] = {}
    reports: dict[str, dict[str, Any]] = {}
    for done, (name, members) in enumerate(plan.items(), start=1):
        terms = [_term(module, weights[index], device) for index, module in members]
        result = method.combine(terms, truncation)
        tensors.update(_module_tensors(name, members[0][1], result, out_dtype))
        reports[name] = {
            "rank": result.rank,
            "retained_energy": round(result.retained_energy, 8),
        }
        if progress is not None:
            progress(done)

    heads = merge_heads(inputs, options.keep_head)
    tensors.update(heads)
    ranks = {name: report["rank"] for name, report in reports.items()}
    config = composed_config([item.adapter for item in inputs], ranks, sorted(heads))

    lineage = _lineage(inputs, weights, options, reports)
    metadata = {"format": "pt", LINEAGE_KEY: json.dumps(lineage, sort_keys=True, separators=(",", ":"))}
    return ComposeResult(LoraAdapter(config, tensors, metadata), lineage)


def check_composable(inputs: Sequence[ComposeInput]) -> None:
    """Reject adapters whose update is not a sum of low-rank products, naming each one."""
    problems = []
    for item in inputs:
        adapter = item.adapter
        if adapter.peft_type not in ("LORA", "ADALORA"):
            problems.append(f"{item.label} is a {adapter.peft_type or 'non-PEFT'} adapter, not LoRA")
        elif adapter.use_dora:
            problems.append(
                f"{item.label} uses DoRA: its magnitude vector rescales the whole weight, so the "
                "update is not B·A and cannot be summed"
            )
        elif adapter.lora_bias:
            problems.append(
                f"{item.label} trains lora_bias: its bias update is not low-rank and has no "
                "composition rule"
            )
    if problems:
        raise UnsupportedCompositionError(
            "cannot compose: " + "; ".join(problems) + ". Only plain LoRA and AdaLoRA compose."
        )


def check_base_models(inputs: Sequence[ComposeInput], allow_mismatch: bool) -> None:
    """Reject adapters trained on different base models unless the user allows it.

    Two names count as the same base when they are equal or when one is the other without its
    Hub namespace (``gpt2`` and ``openai-community/gpt2``), since the Hub moved such models
    into organisations and old configs keep the short name. An adapter with no base model
    recorded is not checked.
    """
    named = [(item.label, item.adapter.base_model) for item in inputs if item.adapter.base_model]
    for label, base in named[1:]:
        if not same_base_model(named[0][1], base):
            if allow_mismatch:
                logger.warning("composing across base models %r and %r", named[0][1], base)
                continue
            listing = ", ".join(f"{name} ({model})" for name, model in named)
            raise BaseModelMismatchError(
                f"the adapters were trained on different base models: {listing}; compose "
                "adapters of one base model, or pass --allow-base-mismatch if the models share "
                "their architecture and you accept the risk"
            )


def same_base_model(first: str, second: str) -> bool:
    """Return whether two base-model names refer to the same model (see check_base_models)."""
    if first == second:
        return True
    return first.rstrip("/").rsplit("/", 1)[-1] == second.rstrip("/").rsplit("/", 1)[-1] and (
        "/" not in first or "/" not in second
    )


def plan_modules(inputs: Sequence[ComposeInput]) -> dict[str, list[tuple[int, LoraModule]]]:
    """Group the modules of all inputs by name and check that their shapes agree.

    Modules that only some adapters touch take the others as zero. Raises
    :class:`ShapeMismatchError` listing every module whose shapes differ.
    """
    plan: dict[str, list[tuple[int, LoraModule]]] = {}
    for index, item in enumerate(inputs):
        for name, module in item.adapter.modules.items():
            plan.setdefault(name, []).append((index, module))

    problems = []
    for name, members in plan.items():
        shapes = {(_weight_shape(module)) for _, module in members}
        if len(shapes) > 1:
            described = ", ".join(
                f"{inputs[index].label} {list(_weight_shape(module))}" for index, module in members
            )
            problems.append(f"module {name!r}: {described}")
    if problems:
        raise ShapeMismatchError(
            "the same module has different weight shapes, so the adapters belong to different "
            "models: " + "; ".join(problems)
        )
    return dict(sorted(plan.items()))


def resolve_device(requested: str | None) -> torch.device:
    """Return the device to compute on: the requested one, else CUDA when available, else CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        from adapterhub.errors import InvalidOptionError

        raise InvalidOptionError(f"device {requested!r} is invalid; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        from adapterhub.errors import InvalidOptionError

        raise InvalidOptionError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
    return device


def _weight_shape(module: LoraModule) -> tuple[int, ...]:
    """Return the shape ΔW has for this module: (out, in, *kernel)."""
    if module.kind == "embedding":
        return (module.lora_A.shape[1], module.lora_B.shape[0])
    return (module.lora_B.shape[0], *module.lora_A.shape[1:])


def _term(module: LoraModule, weight: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    a, b = module.factors()
    return (
        a.to(device=device, dtype=torch.float32),
        b.to(device=device, dtype=torch.float32),
        weight * module.scale,
    )


def _module_tensors(
    name: str, template: LoraModule, result: ModuleResult, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    rank = result.rank
    a = result.lora_A.reshape(rank, *template.lora_A.shape[1:])
    b = result.lora_B.reshape(template.lora_B.shape[0], rank, *template.lora_B.shape[2:])
    prefix = PEFT_KEY_PREFIX + name
    if template.kind == "embedding":
        keys = (f"{prefix}.lora_embedding_A", f"{prefix}.lora_embedding_B")
    else:
        keys = (f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight")
    return {
        keys[0]: a.to(device="cpu", dtype=dtype).contiguous(),
        keys[1]: b.to(device="cpu", dtype=dtype).contiguous(),
    }


def _output_dtype(inputs: Sequence[ComposeInput], requested: str | None) -> torch.dtype:
    if requested is not None:
        return getattr(torch, requested)
    dtypes = {item.adapter.dtype() for item in inputs}
    # Mixed inputs are written in the widest floating type among them.
    return max(dtypes, key=lambda dtype: torch.finfo(dtype).bits)


def _lineage(
    inputs: Sequence[ComposeInput],
    weights: Sequence[float],
    options: ComposeOptions,
    reports: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    energies = [report["retained_energy"] for report in reports.values()]
    return {
        "method": options.method,
        "parameters": options.parameters(),
        "parents": [
            {"id": item.artifact_id, "label": item.label, "weight": weight}
            for item, weight in zip(inputs, weights)
        ],
        "modules": reports,
        "min_retained_energy": min(energies) if energies else 1.0,
    }
