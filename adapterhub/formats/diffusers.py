"""diffusers LoRA files: ``pytorch_lora_weights.safetensors`` (or ``.bin``), alone or in a folder.

Four key spellings are read, each with an optional component prefix (``unet.``,
``text_encoder.``, ``text_encoder_2.``); keys without one are placed by their module path:

- attention processors (diffusers before 0.20):
  ``down_blocks.0….attn1.processor.to_q_lora.down.weight``, and for text encoders
  ``….self_attn.to_q_lora.down.weight``;
- LoRA-compatible layers (diffusers 0.20 to 0.24): ``unet.….to_q.lora.down.weight`` and
  ``text_encoder.….q_proj.lora_linear_layer.down.weight``;
- PEFT keys (diffusers 0.25 on): ``unet.….to_q.lora_A.weight``, with DoRA's
  ``.lora_magnitude_vector``.

The PEFT config, when diffusers saved one, sits in the safetensors header under
``lora_adapter_metadata``: one config for a file saved from a single model, or one per
component with keys such as ``unet.r``. Without it every module has α = rank (scale 1),
which is what diffusers assumes. The writer uses the PEFT spelling with component prefixes
and writes a config per component, so diffusers reloads the exact scaling of every module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from adapterhub.adapter import (
    PEFT_KEY_PREFIX,
    LoraAdapter,
    pattern_value,
    validate_adapter,
)
from adapterhub.errors import AdapterFormatError, ExportError
from adapterhub.formats import sd_naming
from adapterhub.formats.sd_config import (
    build_config,
    exact_patterns,
    module_alphas,
    most_common,
    plain_number,
)
from adapterhub.formats.sd_files import (
    module_problems_error,
    safetensors_keys,
    unrecognised_keys_error,
)
from adapterhub.formats.tensorfile import (
    read_safetensors,
    read_torch_bin,
    safetensors_bytes,
)

NAME = "diffusers"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
PICKLE_WEIGHTS_NAME = "pytorch_lora_weights.bin"
METADATA_KEY = "lora_adapter_metadata"
EXPECTED_KEYS = (
    "diffusers keys: an optional unet., text_encoder. or text_encoder_2. prefix, an SD module "
    "path, and .lora_A.weight/.lora_B.weight, .lora.down.weight/.lora.up.weight, "
    ".lora_linear_layer.down.weight or .processor.to_q_lora.down.weight"
)
# Config fields written per component; the rest of PEFT's LoraConfig keeps its defaults.
_WRITTEN_FIELDS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_dora")

_PROCESSOR = re.compile(
    r"(?P<path>.+)\.processor\.(?P<projection>to_q|to_k|to_v|to_out|add_k_proj|add_v_proj)_lora"
    r"\.(?P<factor>down|up)\.weight"
)
_TEXT_PROCESSOR = re.compile(r"(?P<path>.+)\.(?P<projection>to_q|to_k|to_v|to_out)_lora\.(?P<factor>down|up)\.weight")
_LORA_LAYER = re.compile(r"(?P<path>.+)\.(?:lora|lora_linear_layer)\.(?P<factor>down|up)\.weight")
_PEFT_FACTOR = re.compile(r"(?P<path>.+)\.(?P<factor>lora_A|lora_B)\.weight")
_MAGNITUDE = re.compile(r"(?P<path>.+)\.(?P<factor>lora_magnitude_vector)")
_UNET_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0",
                     "add_k_proj": "add_k_proj", "add_v_proj": "add_v_proj"}
_TEXT_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_FACTORS = {"down": "lora_A", "up": "lora_B", "lora_A": "lora_A", "lora_B": "lora_B",
            "lora_magnitude_vector": "lora_magnitude_vector"}


def detect(path: Path) -> bool:
    """Return whether ``path`` is a diffusers LoRA file, or a folder holding one."""
    if path.is_dir():
        return any((path / name).is_file() for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME))
    if path.name == PICKLE_WEIGHTS_NAME:
        return True
    keys = safetensors_keys(path)
    return keys is not None and any(parse_key(key) is not None for key in keys)


def source_files(path: Path) -> list[tuple[str, Path]]:
    """List the weights file as (name in the store, file); safetensors wins over a ``.bin``."""
    if path.is_dir():
        for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME):
            if (path / name).is_file():
                return [(name, path / name)]
        raise AdapterFormatError(f"{path}: no {WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME} in the folder")
    return [(PICKLE_WEIGHTS_NAME if path.suffix == ".bin" else WEIGHTS_NAME, path)]


def load(path: Path) -> LoraAdapter:
    """Read a diffusers LoRA file or folder; raises :class:`AdapterFormatError` naming what is wrong."""
    return load_files(dict(source_files(path)), str(path))


def load_files(files: dict[str, Path], source: str) -> LoraAdapter:
    """Read a diffusers adapter from its weights file, given by its name in the store."""
    if WEIGHTS_NAME in files:
        tensors, metadata = read_safetensors(files[WEIGHTS_NAME])
    else:
        tensors, metadata = read_torch_bin(files[PICKLE_WEIGHTS_NAME]), {}
    config_text = metadata.pop(METADATA_KEY, None)

    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unrecognised = []
    for key, tensor in tensors.items():
        parsed = parse_key(key)
        if parsed is None:
            unrecognised.append(key)
            continue
        name, factor = parsed
        grouped.setdefault(name, {})[factor] = tensor
    if unrecognised:
        raise unrecognised_keys_error(source, unrecognised, EXPECTED_KEYS)

    configs = component_configs(config_text, {sd_naming.split_component(n)[0] for n in grouped}, source)
    specs, peft_tensors = _modules(grouped, configs, source)
    use_dora = any(key.endswith("lora_magnitude_vector") for key in peft_tensors)
    adapter = LoraAdapter(build_config(specs, use_dora=use_dora), peft_tensors, metadata)
    return validate_adapter(adapter, source)


def parse_key(key: str) -> tuple[str, str] | None:
    """Return ``(canonical module name, PEFT factor name)`` for a diffusers key, or None."""
    component, rest = sd_naming.split_component(key)
    for pattern in (_PROCESSOR, _TEXT_PROCESSOR, _LORA_LAYER, _PEFT_FACTOR, _MAGNITUDE):
        match = pattern.fullmatch(rest)
        if match is None:
            continue
        path = match["path"]
        if pattern is _PROCESSOR:
            path = f"{path}.{_UNET_PROJECTIONS[match['projection']]}"
        elif pattern is _TEXT_PROCESSOR:
            path = f"{path}.{_TEXT_PROJECTIONS[match['projection']]}"
        component = component or _component_of(path)
        if component is None or (pattern is _TEXT_PROCESSOR and component == sd_naming.UNET):
            return None
        return f"{component}.{path}", _FACTORS[match["factor"]]
    return None


def _component_of(path: str) -> str | None:
    if sd_naming.is_unet_module(path):
        return sd_naming.UNET
    if sd_naming.is_text_encoder_module(path):
        return sd_naming.TEXT_ENCODER
    return None


def component_configs(text: str | None, components: set[str | None], source: str) -> dict[str, dict]:
    """Return the PEFT config of each component from ``lora_adapter_metadata``, if any.

    A file saved from a pipeline prefixes every field with its component (``unet.r``). One
    saved from a single model contains one config, which then applies to all its modules.
    """
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise AdapterFormatError(f"{source}: '{METADATA_KEY}' metadata must be a JSON object")
    configs = {}
    for component in sd_naming.COMPONENTS:
        fields = {key[len(component) + 1:]: value for key, value in data.items()
                  if key.startswith(component + ".")}
        if fields:
            configs[component] = fields
    return configs or {component: data for component in components if component}


def _modules(grouped, configs, source):
    """Return ``(rank, alpha)`` per module and the tensors under PEFT keys."""
    specs: dict[str, tuple[int, float]] = {}
    tensors: dict[str, torch.Tensor] = {}
    problems = []
    for name, factors in sorted(grouped.items()):
        if "lora_A" not in factors or "lora_B" not in factors:
            present = ", ".join(sorted(factors))
            problems.append(f"module {name!r} has {present} but not both LoRA factors")
            continue
        component, path = sd_naming.split_component(name)
        rank = factors["lora_A"].shape[0]
        config = configs.get(component, {})
        configured = pattern_value(config.get("rank_pattern"), path, config.get("r") or rank)
        if configured != rank:
            problems.append(f"module {name!r} stores rank {rank} but the {METADATA_KEY} config "
                            f"gives it rank {configured}")
            continue
        alpha = float(pattern_value(config.get("alpha_pattern"), path, config.get("lora_alpha") or rank))
        if config.get("use_rslora"):
            alpha = alpha / rank ** 0.5 * rank
        specs[name] = (rank, alpha)
        for factor, tensor in factors.items():
            suffix = "" if factor == "lora_magnitude_vector" else ".weight"
            tensors[f"{PEFT_KEY_PREFIX}{name}.{factor}{suffix}"] = tensor
    if problems:
        raise module_problems_error(source, problems)
    return specs, tensors


def to_files(adapter: LoraAdapter) -> dict[str, bytes]:
    """Serialize ``adapter`` as one diffusers file with PEFT keys and per-component configs.

    Raises :class:`ExportError` listing the modules without a pipeline component, the LoHa,
    LoKr and embedding modules, and tensors that are not LoRA factors.
    """
    modules = adapter.modules
    problems = []
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if sd_naming.split_component(name)[0] is None:
            problems.append(f"module {name!r} names no pipeline component ({', '.join(sd_naming.COMPONENTS)})")
        elif module.kind not in ("linear", "conv"):
            problems.append(f"module {name!r} is {module.kind}, which diffusers LoRA files cannot hold"
                            + ("; export with --format lycoris" if module.kind in ("loha", "lokr") else ""))
        else:
            tensors[f"{name}.lora_A.weight"] = module.lora_A
            tensors[f"{name}.lora_B.weight"] = module.lora_B
    for key in adapter.extra_keys:
        name = key.removeprefix(PEFT_KEY_PREFIX)
        if name.endswith(".lora_magnitude_vector") and name.rsplit(".", 1)[0] in modules:
            tensors[name] = adapter.tensors[key]
        else:
            problems.append(f"tensor {key!r} is not a LoRA factor; diffusers files hold LoRA modules only"
                            + (" (kohya's dora_scale has no diffusers spelling)" if key.endswith("dora_scale") else ""))
    if problems:
        raise ExportError("cannot write a diffusers file:\n  " + "\n  ".join(problems))

    metadata = dict(adapter.metadata)
    metadata[METADATA_KEY] = json.dumps(_written_configs(modules, tensors), indent=2, sort_keys=True)
    return {WEIGHTS_NAME: safetensors_bytes(tensors, metadata)}


def _written_configs(modules, tensors) -> dict[str, object]:
    alphas = module_alphas(modules)
    flat: dict[str, object] = {}
    for component in sd_naming.COMPONENTS:
        names = {name: sd_naming.split_component(name)[1] for name in modules
                 if name.startswith(component + ".")}
        if not names:
            continue
        ranks = {path: modules[name].rank for name, path in names.items()}
        component_alphas = {path: alphas[name] for name, path in names.items()}
        rank = most_common(ranks.values())
        alpha = plain_number(most_common(component_alphas.values()))
        config = {
            "r": rank,
            "lora_alpha": alpha,
            "rank_pattern": exact_patterns(ranks, rank, anchor="^"),
            "alpha_pattern": exact_patterns(component_alphas, alpha, anchor="^"),
            "target_modules": sorted(ranks),
            "use_dora": any(f"{name}.lora_magnitude_vector" in tensors for name in names),
        }
        flat.update({f"{component}.{key}": config[key] for key in _WRITTEN_FIELDS})
    return flat
