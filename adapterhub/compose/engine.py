"""The composition engine: checks the inputs, plans per module, runs a method, builds the result.

The engine works on :class:`~adapterhub.adapter.LoraAdapter` objects in memory and never
reads the store. :mod:`adapterhub.library` resolves references and records the result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from adapterhub.adapter import PEFT_KEY_PREFIX, LoraAdapter, LoraModule
from adapterhub.compose.blocks import block_rules
from adapterhub.compose.config import composed_config
from adapterhub.compose.execution import build_jobs, compute_threads, results_to_host, run_jobs
from adapterhub.compose.heads import merge_heads
from adapterhub.compose.inputs import ComposeInput
from adapterhub.compose.methods import METHODS, ModuleResult, Settings, Truncation
from adapterhub.compose.options import ComposeOptions
from adapterhub.compose.weights import module_weights
from adapterhub.errors import (
    BaseModelMismatchError,
    ShapeMismatchError,
    UnsupportedCompositionError,
)

logger = logging.getLogger(__name__)

LINEAGE_KEY = "adapterhub.lineage"

__all__ = ["ComposeInput", "ComposeResult", "compose"]

# The reason each of these PEFT types has no composition rule.
_NOT_LOW_RANK = {
    "IA3": "it rescales activations element-wise (W·diag(l)), a multiplicative change, not an "
    "added low-rank update",
    "PROMPT_TUNING": "it trains virtual input tokens and changes no weight",
    "P_TUNING": "it trains virtual input tokens through a prompt encoder and changes no weight",
    "PREFIX_TUNING": "it trains key and value prefixes for every layer and changes no weight",
    "MULTITASK_PROMPT_TUNING": "it trains virtual input tokens and changes no weight",
    "ADAPTION_PROMPT": "it trains gated prompts inside attention and changes no weight",
}


@dataclass(frozen=True)
class ComposeResult:
    """The composed adapter and the recipe recorded in it."""

    adapter: LoraAdapter
    lineage: dict[str, Any]


def compose(
    inputs: Sequence[ComposeInput],
    options: ComposeOptions,
    progress: Callable[[int, int], None] | None = None,
) -> ComposeResult:
    """Compose ``inputs`` with ``options`` into a new PEFT LoRA adapter.

    Raises :class:`UnsupportedCompositionError` for adapters whose update is not a sum of
    low-rank products (DoRA, lora_bias, IA3, prompt and prefix tuning, ...),
    :class:`BaseModelMismatchError` for different base models (unless allowed),
    :class:`ShapeMismatchError` when one module has different shapes (or, for ``linear``,
    ranks), :class:`HeadConflictError` for differing ``modules_to_save`` heads and
    :class:`InvalidOptionError` for weights or module weights that do not fit the inputs.
    ``progress`` is called with the number of modules finished and the total, after each
    module or batch.
    """
    weights = options.weights_for(len(inputs))
    check_composable(inputs)
    check_base_models(inputs, options.allow_base_mismatch)
    check_base_families(inputs, options.allow_base_mismatch)
    plan = plan_modules(inputs)
    rules = block_rules(inputs, weights, options.block_weights) + options.module_weights
    plan_weights = module_weights(inputs, plan, weights, rules)

    device = resolve_device(options.device)
    method = METHODS[options.method]
    settings = Settings(Truncation(options.rank, options.energy), options.density,
                        options.majority_sign, options.seed)
    out_dtype = _output_dtype(inputs, options.dtype)
    # A float64 output requests float64 arithmetic, which comparisons with dense references
    # need. Every other output dtype is computed in float32.
    compute_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32

    with compute_threads(device, method):
        jobs = build_jobs(plan, plan_weights, device, compute_dtype)
        if method.check is not None:
            method.check(jobs)
        results = results_to_host(run_jobs(method, jobs, settings, progress))

    tensors: dict[str, torch.Tensor] = {}
    reports: dict[str, dict[str, Any]] = {}
    for (name, members), result in zip(plan.items(), results):
        tensors.update(_module_tensors(name, members[0][1], result, out_dtype))
        reports[name] = _report(result)
        # LoHa and LoKr inputs arrive as LoRA factors of their update, cut at rounding level.
        conversion = max(module.conversion_error for _, module in members)
        if conversion:
            reports[name]["conversion_error"] = float(f"{conversion:.6g}")

    heads = merge_heads(inputs, options.keep_head)
    tensors.update(heads)
    ranks = {name: report["rank"] for name, report in reports.items()}
    config = composed_config([item.adapter for item in inputs], ranks, sorted(heads))

    lineage = _lineage(inputs, weights, options, reports)
    metadata = {"format": "pt", LINEAGE_KEY: json.dumps(lineage, sort_keys=True, separators=(",", ":"))}
    return ComposeResult(LoraAdapter(config, tensors, metadata), lineage)


def check_composable(inputs: Sequence[ComposeInput]) -> None:
    """Reject adapters whose update is not a sum of low-rank products, naming each and why."""
    problems = [problem for item in inputs if (problem := _composition_problem(item))]
    if problems:
        raise UnsupportedCompositionError(
            "cannot compose: " + "; ".join(problems)
            + ". Only plain LoRA, AdaLoRA, LoHa and LoKr compose."
        )


def _composition_problem(item: ComposeInput) -> str | None:
    adapter = item.adapter
    peft_type = adapter.peft_type
    if peft_type in _NOT_LOW_RANK:
        return f"{item.label} is an adapter of type {peft_type}: {_NOT_LOW_RANK[peft_type]}"
    if peft_type not in ("LORA", "ADALORA", "LOHA", "LOKR"):
        return (
            f"{item.label} is an adapter of type {peft_type or 'unknown'}, whose update is not "
            "a product B·A of two LoRA factors"
        )
    if adapter.use_dora:
        return (
            f"{item.label} uses DoRA: its magnitude vector rescales the whole weight, so the "
            "update is not B·A and cannot be summed"
        )
    if adapter.lora_bias:
        return (
            f"{item.label} trains lora_bias: its bias update is not low-rank and has no "
            "composition rule"
        )
    return None


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


def check_base_families(inputs: Sequence[ComposeInput], allow_mismatch: bool) -> None:
    """Reject Stable Diffusion adapters of different base families (SD 1.x, SDXL, ...).

    The family comes from module shapes (see :mod:`adapterhub.formats.sd_family`); adapters
    whose family is unknown are not checked. ``allow_mismatch`` turns the error into a warning.
    """
    from adapterhub.formats.sd_family import base_family, describe_family

    families = [(item.label, base_family(item.adapter.modules)) for item in inputs]
    known = [(label, family) for label, family in families if family is not None]
    if len({family for _, family in known}) <= 1:
        return
    listing = ", ".join(f"{label} ({describe_family(family)})" for label, family in known)
    if allow_mismatch:
        logger.warning("composing across base model families: %s", listing)
        return
    raise BaseModelMismatchError(
        f"the adapters were made for different base model families: {listing}; compose "
        "adapters of one family"
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


def _report(result: ModuleResult) -> dict[str, Any]:
    return {
        "rank": result.rank,
        "retained_energy": round(result.retained_energy, 8),
        "relative_error": float(f"{result.relative_error:.6g}"),
    }


def _lineage(
    inputs: Sequence[ComposeInput],
    weights: Sequence[float],
    options: ComposeOptions,
    reports: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    energies = [report["retained_energy"] for report in reports.values()]
    errors = [report["relative_error"] for report in reports.values()]
    return {
        "method": options.method,
        "parameters": options.parameters(),
        "parents": [
            {"id": item.artifact_id, "label": item.label, "weight": weight}
            for item, weight in zip(inputs, weights)
        ],
        "modules": reports,
        "min_retained_energy": min(energies) if energies else 1.0,
        "max_relative_error": max(errors) if errors else 0.0,
    }
