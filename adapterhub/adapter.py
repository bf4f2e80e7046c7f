"""LoRA adapters in memory: the PEFT config, the tensors under PEFT's key names, and modules.

An adapter keeps its state dict exactly as read, so writing it back gives the same tensors bit
for bit. The per-module view (:meth:`LoraAdapter.modules`) pairs ``lora_A`` with ``lora_B`` and
resolves the rank and scaling that PEFT would use for that module.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any

import torch

from adapterhub.errors import AdapterFormatError, UnsupportedAdapterError

# The safetensors metadata key under which a composed adapter records its recipe.
LINEAGE_KEY = "adapterhub.lineage"

# PEFT saves module keys under this prefix: the model is wrapped as ``base_model.model``.
PEFT_KEY_PREFIX = "base_model.model."

# PEFT types whose files are recognised; only LORA composes directly.
KNOWN_PEFT_TYPES = (
    "LORA", "ADALORA", "LOHA", "LOKR", "IA3", "OFT", "BOFT", "VERA", "FOURIERFT", "LN_TUNING",
    "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT",
    "POLY", "HRA", "BONE", "XLORA", "VBLORA", "CPT", "RANDLORA", "SHIRA", "C3A", "MISS",
)

# The largest rank accepted on read. Real adapters stay far below it, so a larger value comes
# from a corrupt or hostile config and would make composition allocate absurd buffers.
MAX_RANK = 65536

_FACTOR_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<factor>lora_A|lora_B|lora_E|lora_embedding_A|lora_embedding_B)"
    r"(?:\.weight)?$"
)
# Parameters of PEFT's LoHa and LoKr layers, which LyCORIS files contain too.
_LYCORIS_KEY = re.compile(r"^.+\.(?:hada_(?:w[12]_[ab]|t[12])|lokr_(?:w[12](?:_[ab])?|t2))$")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its factors, rank and PEFT scaling.

    ``name`` is the module path inside the base model (``transformer.h.0.attn.c_attn``), the
    name PEFT matches against ``target_modules`` and ``rank_pattern``; Stable Diffusion
    modules carry their pipeline component first (``unet.down_blocks.0…``). ``lora_A`` and
    ``lora_B`` keep their stored shapes; :meth:`factors` gives the 2-D view used for arithmetic.

    LoHa and LoKr modules (kinds ``"loha"`` and ``"lokr"``) are given as LoRA factors of
    their update, computed on read. ``conversion_error`` is the relative Frobenius error of
    those factors against the exact update, and 0 for the other kinds.
    """

    name: str
    kind: str  # "linear", "conv", "embedding", "loha" or "lokr"
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    rank: int
    alpha: float
    scale: float
    conversion_error: float = 0.0

    @property
    def in_features(self) -> int:
        return math.prod(self.lora_A.shape[1:]) if self.kind != "embedding" else self.lora_A.shape[1]

    @property
    def out_features(self) -> int:
        return self.lora_B.shape[0]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(A, B)`` as 2-D matrices, ``A`` (r × in) and ``B`` (out × r).

        Conv kernels are flattened so that ΔW = scale · B @ A has the conv weight's shape with
        the kernel dimensions flattened into ``in``.
        """
        a = self.lora_A.reshape(self.lora_A.shape[0], -1)
        b = self.lora_B.reshape(self.lora_B.shape[0], -1)
        return a, b

    def delta(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Return the dense update ΔW = scale · B @ A (out × in) in ``dtype``."""
        a, b = self.factors()
        return self.scale * (b.to(dtype) @ a.to(dtype))


@dataclass
class LoraAdapter:
    """A PEFT adapter: its config, its tensors as stored, and the safetensors header metadata."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type") or "")

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def rank(self) -> int:
        return int(self.config.get("r") or 0)

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha") or self.rank)

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora")) or any(
            "lora_magnitude_vector" in key for key in self.tensors
        )

    @property
    def lora_bias(self) -> bool:
        return bool(self.config.get("lora_bias")) or any(
            key.endswith("lora_B.bias") for key in self.tensors
        )

    @property
    def lineage(self) -> dict[str, Any] | None:
        """Return the composition recipe recorded in the file, if this adapter was composed."""
        text = self.metadata.get(LINEAGE_KEY)
        return json.loads(text) if text else None

    @cached_property
    def modules(self) -> dict[str, LoraModule]:
        """Return the adapted modules by name, with PEFT's rank and scaling resolved."""
        return _pair_factors(self)

    @cached_property
    def extra_keys(self) -> tuple[str, ...]:
        """Return the keys that are not LoRA factors: ``modules_to_save`` heads, biases."""
        return tuple(sorted(key for key in self.tensors
                            if not _FACTOR_KEY.match(key) and not _LYCORIS_KEY.match(key)))

    def dtype(self) -> torch.dtype:
        """Return the dtype of the LoRA factors (the widest one if they differ)."""
        dtypes = {m.lora_A.dtype for m in self.modules.values()} | {
            m.lora_B.dtype for m in self.modules.values()
        }
        if not dtypes:
            return torch.float32
        return max(dtypes, key=lambda dt: (torch.finfo(dt).bits, torch.finfo(dt).eps * -1))

    def parameter_count(self) -> int:
        return sum(tensor.numel() for tensor in self.tensors.values())

    def describe(self) -> dict[str, Any]:
        """Return the facts that the store indexes and the manifest records."""
        modules = self.modules
        ranks = sorted({m.rank for m in modules.values()})
        description: dict[str, Any] = {
            "peft_type": self.peft_type,
            "base_model": self.base_model,
            "task_type": self.config.get("task_type"),
            "rank": self.rank or (ranks[-1] if ranks else None),
            "alpha": self.alpha if self.rank else None,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "target_modules": sorted({name.rsplit(".", 1)[-1] for name in modules}),
            "module_count": len(modules),
            "module_ranks": ranks,
            "modules_to_save": sorted(set(self.config.get("modules_to_save") or [])),
            "parameters": self.parameter_count(),
            "dtype": str(self.dtype()).removeprefix("torch."),
        }
        description.update(_stable_diffusion_facts(modules))
        lineage = self.lineage
        if lineage is not None:
            description["lineage"] = lineage
        return description


def module_name(key_prefix: str) -> str:
    """Strip PEFT's ``base_model.model.`` wrapper from a key prefix."""
    return key_prefix.removeprefix(PEFT_KEY_PREFIX)


def pattern_value(patterns: dict[str, Any] | None, name: str, default: Any) -> Any:
    """Look ``name`` up in a PEFT ``rank_pattern``/``alpha_pattern`` the way PEFT does.

    PEFT treats each key as a regular expression that must match the end of the module name
    after a dot (``(.*\\.)?(key)$``); the first key that matches wins.
    """
    for key, value in (patterns or {}).items():
        if _pattern_regex(key).match(name):
            return value
    return default


@lru_cache(maxsize=8192)
def _pattern_regex(key: str) -> re.Pattern:
    # re's own cache keeps 512 patterns. A config with more keys (one per module of a large
    # kohya file) would recompile every key for every module.
    return re.compile(rf"(.*\.)?({key})$")


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """Return PEFT's scaling: α / r, or α / √r with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def _stable_diffusion_facts(modules: dict[str, LoraModule]) -> dict[str, Any]:
    """Return the components and base family of a Stable Diffusion adapter, else nothing."""
    from adapterhub.formats.sd_family import base_family
    from adapterhub.formats.sd_naming import split_component

    components = sorted({c for c in (split_component(name)[0] for name in modules) if c})
    if not components:
        return {}
    return {"components": components, "base_family": base_family(modules)}


def _pair_factors(adapter: LoraAdapter) -> dict[str, LoraModule]:
    if adapter.peft_type in ("LOHA", "LOKR"):
        from adapterhub.formats.lycoris import lycoris_modules

        return lycoris_modules(adapter)
    modules = _lora_modules(adapter)
    # A PEFT adapter trained on a bare diffusers UNet names its modules without the
    # component. Its canonical names carry it, so that it composes with other SD formats.
    from adapterhub.formats.sd_naming import unprefixed_component

    auto_mapping = adapter.config.get("auto_mapping")
    model_class = auto_mapping.get("base_model_class") if isinstance(auto_mapping, dict) else None
    component = unprefixed_component(list(modules), model_class)
    if component is None:
        return modules
    return {f"{component}.{name}": replace(module, name=f"{component}.{name}")
            for name, module in modules.items()}


def _lora_modules(adapter: LoraAdapter) -> dict[str, LoraModule]:
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.tensors.items():
        match = _FACTOR_KEY.match(key)
        if match:
            factors.setdefault(match["module"], {})[match["factor"]] = tensor

    problems = []
    modules = {}
    for prefix, parts in sorted(factors.items()):
        try:
            module = _build_module(adapter, prefix, parts)
        except AdapterFormatError as exc:
            problems.append(str(exc))
            continue
        modules[module.name] = module

    if problems:
        raise AdapterFormatError("invalid LoRA factors:\n  " + "\n  ".join(problems))
    return modules


def _build_module(adapter: LoraAdapter, prefix: str, parts: dict[str, torch.Tensor]) -> LoraModule:
    name = module_name(prefix)
    if "lora_embedding_A" in parts or "lora_embedding_B" in parts:
        kind, a_key, b_key = "embedding", "lora_embedding_A", "lora_embedding_B"
    else:
        kind, a_key, b_key = "linear", "lora_A", "lora_B"

    if a_key not in parts or b_key not in parts:
        present, missing = (a_key, b_key) if a_key in parts else (b_key, a_key)
        raise AdapterFormatError(
            f"module {name!r} has {present} but no {missing}; every LoRA module needs both factors"
        )

    a, b = parts[a_key], parts[b_key]
    if a.dim() < 2 or b.dim() < 2 or b.shape[1] != a.shape[0]:
        raise AdapterFormatError(
            f"module {name!r}: {a_key} has shape {list(a.shape)} and {b_key} {list(b.shape)}, "
            f"but {a_key} must be (r × in) and {b_key} (out × r) with the same r"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise AdapterFormatError(
            f"module {name!r}: {a_key} has dtype {a.dtype} and {b_key} {b.dtype}, but LoRA "
            "factors must be floating point"
        )
    if a.dim() > 2:
        kind = "conv"
    rank = a.shape[0]

    if "lora_E" in parts:
        singular_values = parts["lora_E"]
        if singular_values.numel() != rank or not singular_values.is_floating_point():
            raise AdapterFormatError(
                f"module {name!r}: lora_E has shape {list(singular_values.shape)} and dtype "
                f"{singular_values.dtype}, but AdaLoRA needs {rank} floating-point values"
            )
        # AdaLoRA: ΔW = B · diag(E) · A. Folding E into A gives an exact plain LoRA pair.
        a = a * singular_values.reshape(-1, 1)

    return LoraModule(name, kind, a, b, rank, *_resolve_scale(adapter, name, rank))


def _resolve_scale(adapter: LoraAdapter, name: str, stored_rank: int) -> tuple[float, float]:
    config = adapter.config
    if adapter.peft_type == "ADALORA":
        # AdaLoRA divides by ``ranknum``, a buffer that is not saved: it equals the rank the
        # module was built with, which is the stored rank. PEFT adds 1e-5 to it, and so do we.
        alpha = float(config.get("lora_alpha") or stored_rank)
        return alpha, alpha / (stored_rank + 1e-5)

    rank = int(pattern_value(config.get("rank_pattern"), name, adapter.rank or stored_rank))
    alpha = float(pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha") or rank))
    if rank != stored_rank:
        raise AdapterFormatError(
            f"module {name!r} stores rank {stored_rank} but the config gives it rank {rank}; "
            "fix r or rank_pattern in adapter_config.json"
        )
    return alpha, lora_scale(alpha, rank, adapter.use_rslora)


def validate_config(config: Any, source: str) -> dict[str, Any]:
    """Check that a parsed ``adapter_config.json`` describes an adapter we can read.

    Raises :class:`AdapterFormatError` for a config that is not a JSON object or has an
    impossible rank, and :class:`UnsupportedAdapterError` when ``peft_type`` is missing or
    unknown.
    """
    if not isinstance(config, dict):
        raise AdapterFormatError(
            f"{source}: adapter_config.json must hold a JSON object, found {type(config).__name__}"
        )
    peft_type = config.get("peft_type")
    if not peft_type:
        keys = ", ".join(sorted(config)) or "none"
        raise UnsupportedAdapterError(
            f"{source}: adapter_config.json has no 'peft_type' (keys: {keys}), so it is not a "
            "PEFT adapter; save the adapter with PEFT's save_pretrained"
        )
    if peft_type not in KNOWN_PEFT_TYPES:
        raise UnsupportedAdapterError(
            f"{source}: unknown peft_type {peft_type!r}; known types: {', '.join(KNOWN_PEFT_TYPES)}"
        )
    rank = config.get("r")
    if rank is not None and not _is_rank(rank):
        raise AdapterFormatError(
            f"{source}: r = {rank!r} in adapter_config.json; expected an integer from 1 to {MAX_RANK}"
        )
    problems = _config_value_problems(config)
    if problems:
        raise AdapterFormatError(
            f"{source}: invalid values in adapter_config.json: {'; '.join(problems)}; "
            "save the adapter again with PEFT"
        )
    return config


def _config_value_problems(config: dict[str, Any]) -> list[str]:
    """List the config values whose type or range the adapter code cannot work with."""
    problems = []
    alpha = config.get("lora_alpha")
    if alpha is not None and not _is_finite_number(alpha):
        problems.append(f"lora_alpha = {alpha!r} is not a finite number")
    for key in ("base_model_name_or_path", "task_type"):
        if config.get(key) is not None and not isinstance(config[key], str):
            problems.append(f"{key} = {config[key]!r} is not a string")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not _is_names(targets):
        problems.append(f"target_modules = {targets!r} is not a list of names or a regex")
    heads = config.get("modules_to_save")
    if heads is not None and not _is_names(heads):
        problems.append(f"modules_to_save = {heads!r} is not a list of names")
    problems += _pattern_problems(config, "rank_pattern", _is_rank, f"an integer from 1 to {MAX_RANK}")
    problems += _pattern_problems(config, "alpha_pattern", _is_finite_number, "a finite number")
    return problems


def _pattern_problems(config: dict[str, Any], key: str, valid: Any, expected: str) -> list[str]:
    patterns = config.get(key)
    if patterns is None:
        return []
    if not isinstance(patterns, dict):
        return [f"{key} = {patterns!r} is not an object"]
    problems = []
    for pattern, value in patterns.items():
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            problems.append(f"{key} key {pattern!r} is not a valid regular expression ({exc})")
        if not valid(value):
            problems.append(f"{key}[{pattern!r}] = {value!r} is not {expected}")
    return problems


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_RANK


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def validate_adapter(adapter: LoraAdapter, source: str) -> LoraAdapter:
    """Check the tensors against the config: non-empty, paired factors, consistent ranks.

    A recorded composition recipe (``adapterhub.lineage``) must be a JSON object whose
    parents each name a 64-digit artifact id.
    """
    if not adapter.tensors:
        raise AdapterFormatError(
            f"{source}: the weights file contains no tensors; check that the adapter was saved"
        )
    _check_lineage(adapter, source)
    if adapter.peft_type in ("LORA", "ADALORA"):
        try:
            modules = adapter.modules
        except AdapterFormatError as exc:
            raise AdapterFormatError(f"{source}: {exc}") from exc
        if not modules:
            sample = ", ".join(list(adapter.tensors)[:3])
            raise AdapterFormatError(
                f"{source}: no lora_A/lora_B pairs among the tensors (first keys: {sample})"
            )
    return adapter


def nonfinite_tensors(adapter: LoraAdapter) -> dict[str, int]:
    """Return the number of NaN and infinite values of each floating-point tensor that has any."""
    counts = {}
    for key, tensor in sorted(adapter.tensors.items()):
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                counts[key] = count
    return counts


def check_finite(adapter: LoraAdapter, source: str) -> None:
    """Raise :class:`AdapterFormatError` naming every tensor that contains NaN or infinite values."""
    counts = nonfinite_tensors(adapter)
    if not counts:
        return
    listed = [f"{key} ({count})" for key, count in list(counts.items())[:5]]
    if len(counts) > 5:
        listed.append(f"and {len(counts) - 5} more")
    raise AdapterFormatError(
        f"{source}: {len(counts)} tensors contain NaN or infinite values: {', '.join(listed)}; "
        "such an adapter breaks any model it is applied to. Fix the training run, or pass "
        "allow_nonfinite=True (--allow-nonfinite) to store it anyway"
    )


def _check_lineage(adapter: LoraAdapter, source: str) -> None:
    text = adapter.metadata.get(LINEAGE_KEY)
    if text is None:
        return
    try:
        lineage = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise AdapterFormatError(f"{source}: '{LINEAGE_KEY}' metadata is not valid JSON ({exc})") from exc
    parents = lineage.get("parents", []) if isinstance(lineage, dict) else None
    if not isinstance(parents, list) or not all(_is_parent(parent) for parent in parents):
        raise AdapterFormatError(
            f"{source}: '{LINEAGE_KEY}' metadata must be a JSON object whose 'parents' are "
            "objects with a 64-digit hex 'id', a numeric 'weight' and a string 'label'; "
            "compose the adapter again to rewrite its recipe"
        )


def _is_parent(parent: Any) -> bool:
    if not isinstance(parent, dict) or not isinstance(parent.get("id"), str):
        return False
    weight, label = parent.get("weight", 0.0), parent.get("label", "")
    return (
        re.fullmatch(r"[0-9a-f]{64}", parent["id"]) is not None
        and _is_finite_number(weight)
        and isinstance(label, str)
    )
