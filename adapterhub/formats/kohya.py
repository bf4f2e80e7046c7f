"""kohya and A1111 LoRA files: one safetensors file with ``lora_unet_…`` and ``lora_te…`` keys.

Each module is spelled ``lora_unet_<path with _ for .>`` (``lora_te_``, ``lora_te1_`` and
``lora_te2_`` for the text encoders) and stores ``.lora_down.weight`` (PEFT's lora_A),
``.lora_up.weight`` (lora_B), a scalar ``.alpha`` (absent means α = rank) and, for DoRA, a
``.dora_scale``. The header metadata (kohya's ``ss_*`` training record, ``modelspec.*``) is
kept as it is.

In memory the tensors sit under PEFT keys of the canonical module names
(``base_model.model.unet.down_blocks.0….lora_A.weight``), and the per-module alphas are the
config's ``lora_alpha`` and ``alpha_pattern`` (see :mod:`adapterhub.formats.sd_config`).
Some choices are not part of the canonical form: SDXL's original block names, an alpha
missing from a module or stored in another dtype. Where a file departs from the default, they
are recorded under :data:`SPELLING_KEY` in the metadata, so that writing the adapter back
gives the same tensors. :mod:`adapterhub.formats.lycoris` reads LoHa and LoKr files with the
same machinery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from adapterhub.adapter import PEFT_KEY_PREFIX, LoraAdapter, validate_adapter
from adapterhub.errors import AdapterFormatError, ExportError
from adapterhub.formats import sd_naming
from adapterhub.formats.sd_config import build_config, module_alphas
from adapterhub.formats.sd_family import FAMILIES, base_family
from adapterhub.formats.sd_files import module_problems_error, safetensors_keys, unrecognised_keys_error
from adapterhub.formats.tensorfile import read_safetensors, safetensors_bytes

NAME = "kohya"
STORED_NAME = "lora.safetensors"
SPELLING_KEY = "adapterhub.kohya_spelling"
LORA_PARAMETERS = ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale")
EXPECTED_KEYS = (
    "kohya keys: lora_unet_, lora_te_, lora_te1_ or lora_te2_ plus an SD UNet or CLIP module "
    "path, ending in .lora_down.weight, .lora_up.weight, .alpha or .dora_scale"
)
_SDXL_FAMILIES = ("sdxl", "sdxl-refiner")


def detect(path: Path) -> bool:
    """Return whether ``path`` is a safetensors file with kohya LoRA keys (and no LyCORIS ones)."""
    keys = safetensors_keys(path)
    return keys is not None and has_kohya_keys(keys) and not any(_is_lycoris_key(k) for k in keys)


def has_kohya_keys(keys: list[str]) -> bool:
    """Return whether any key starts with one of kohya's component prefixes."""
    return any(key.startswith(tuple(f"{p}_" for p in sd_naming.KOHYA_PREFIXES)) for key in keys)


def source_files(path: Path) -> list[tuple[str, Path]]:
    """List the one file of the adapter as (name in the store, file)."""
    return [(STORED_NAME, path)]


def load(path: Path) -> LoraAdapter:
    """Read a kohya LoRA file; raises :class:`AdapterFormatError` naming what is wrong."""
    return load_files({STORED_NAME: path}, str(path))


def load_files(files: dict[str, Path], source: str) -> LoraAdapter:
    """Read a kohya adapter from its one file, given by its name in the store."""
    tensors, metadata = read_safetensors(files[STORED_NAME])
    metadata.pop(SPELLING_KEY, None)
    groups = read_groups(tensors, LORA_PARAMETERS, EXPECTED_KEYS, source)

    peft_tensors: dict[str, torch.Tensor] = {}
    specs: dict[str, tuple[int, float]] = {}
    problems = []
    for name, group in groups.modules.items():
        down, up = group.get("lora_down.weight"), group.get("lora_up.weight")
        if down is None or up is None:
            present, missing = ("lora_down", "lora_up") if up is None else ("lora_up", "lora_down")
            problems.append(f"{groups.keys[name]} has {present}.weight but no {missing}.weight")
            continue
        peft_tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = down
        peft_tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = up
        if "dora_scale" in group:
            peft_tensors[f"{PEFT_KEY_PREFIX}{name}.dora_scale"] = group["dora_scale"]
        specs[name] = (down.shape[0], groups.effective_alpha(name, down.shape[0], problems))
    if problems:
        raise module_problems_error(source, problems)

    use_dora = any(key.endswith(".dora_scale") for key in peft_tensors)
    adapter = LoraAdapter(build_config(specs, use_dora=use_dora), peft_tensors, metadata)
    validate_adapter(adapter, source)
    weight_dtypes = {name: group["lora_down.weight"].dtype for name, group in groups.modules.items()}
    record_spelling(adapter, groups, weight_dtypes, {name: alpha for name, (_, alpha) in specs.items()})
    return adapter


def to_files(adapter: LoraAdapter) -> dict[str, bytes]:
    """Serialize ``adapter`` as one kohya file, deterministically.

    Raises :class:`ExportError` listing the modules and tensors kohya keys cannot hold:
    LoHa and LoKr modules, embeddings, modules outside the SD UNet and CLIP text encoders,
    and full tensors such as ``modules_to_save`` heads.
    """
    modules = adapter.modules
    problems = [_kind_problem(name, module.kind) for name, module in modules.items()
                if module.kind not in ("linear", "conv")]
    parameters: dict[str, dict[str, torch.Tensor]] = {
        name: {"lora_down.weight": module.lora_A, "lora_up.weight": module.lora_B}
        for name, module in modules.items() if module.kind in ("linear", "conv")
    }
    for key in adapter.extra_keys:
        name = key.removeprefix(PEFT_KEY_PREFIX).removesuffix(".dora_scale")
        if key.endswith(".dora_scale") and name in parameters:
            parameters[name]["dora_scale"] = adapter.tensors[key]
        else:
            problems.append(f"tensor {key!r} is not a LoRA factor (a modules_to_save head or a "
                            "bias), and kohya files hold LoRA modules only")
    if problems:
        raise ExportError("cannot write a kohya file:\n  " + "\n  ".join(problems))

    alphas = module_alphas({name: modules[name] for name in parameters})
    dtypes = {name: group["lora_down.weight"].dtype for name, group in parameters.items()}
    tensors, metadata = write_groups(adapter, parameters, alphas, dtypes)
    return {STORED_NAME: safetensors_bytes(tensors, metadata)}


@dataclass
class KohyaGroups:
    """The tensors of a kohya-keyed file, grouped per canonical module name."""

    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # canonical name → kohya module key
    namings: dict[str, str] = field(default_factory=dict)  # canonical name → UNet naming
    stored_alphas: dict[str, float] = field(default_factory=dict)

    def effective_alpha(self, name: str, rank: int, problems: list[str]) -> float:
        """Return the module's α: its ``.alpha``, or the rank when absent or 0 (kohya's rule)."""
        alpha = self.modules[name].get("alpha")
        if alpha is None:
            return float(rank)
        if alpha.numel() != 1 or not torch.isfinite(alpha).all():
            problems.append(f"{self.keys[name]}.alpha must be one finite number, found shape "
                            f"{list(alpha.shape)}")
            return float(rank)
        value = float(alpha.reshape(()).item())
        self.stored_alphas[name] = value
        return value if value != 0 else float(rank)


def read_groups(tensors: Mapping[str, torch.Tensor], parameters: tuple[str, ...], expected: str,
                source: str) -> KohyaGroups:
    """Group kohya-keyed tensors by canonical module; raises for keys it cannot place."""
    groups = KohyaGroups()
    unrecognised = []
    problems = []
    for key, tensor in tensors.items():
        module_key, _, parameter = key.partition(".")
        parsed = sd_naming.kohya_to_canonical(module_key) if parameter in parameters else None
        if parsed is None:
            unrecognised.append(key)
            continue
        name, naming = parsed
        if groups.keys.setdefault(name, module_key) != module_key:
            problems.append(f"{groups.keys[name]} and {module_key} are the same module {name}")
            continue
        groups.modules.setdefault(name, {})[parameter] = tensor
        groups.namings[name] = naming
    if unrecognised:
        raise unrecognised_keys_error(source, unrecognised, expected)
    if problems:
        raise module_problems_error(source, problems)
    if not groups.modules:
        raise AdapterFormatError(f"{source}: the file contains no tensors; check that it was saved")
    return groups


@dataclass(frozen=True)
class Spelling:
    """The spelling choices of a kohya file that the canonical form leaves open."""

    unet_naming: str
    text_encoder_prefix: str
    attention_up_blocks: frozenset[int]
    without_alpha: frozenset[str] = frozenset()
    alpha_dtype: str | None = None
    alpha_dtypes: dict[str, str] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)

    def alpha_tensor(self, name: str, alpha: float, weight_dtype: torch.dtype) -> torch.Tensor:
        """Return the ``.alpha`` tensor to write for module ``name``."""
        dtype_name = self.alpha_dtypes.get(name) or self.alpha_dtype
        dtype = getattr(torch, dtype_name) if dtype_name else weight_dtype
        return torch.tensor(self.alphas.get(name, alpha), dtype=dtype)


def default_spelling(adapter: LoraAdapter) -> Spelling:
    """Return the spelling kohya's sd-scripts would use for this adapter's family."""
    names = list(adapter.modules)
    family = base_family(adapter.modules)
    sdxl = family in _SDXL_FAMILIES or any(n.startswith(sd_naming.TEXT_ENCODER_2 + ".") for n in names)
    if family is not None:
        attention_up_blocks = FAMILIES[family].attention_up_blocks
    else:
        attention_up_blocks = frozenset(
            int(n.split(".")[2]) for n in names if n.startswith("unet.up_blocks.") and ".attentions." in n
        )
    return Spelling(
        unet_naming=sd_naming.LDM_NAMING if sdxl else sd_naming.DIFFUSERS_NAMING,
        text_encoder_prefix="lora_te1" if sdxl else "lora_te",
        attention_up_blocks=attention_up_blocks,
    )


def record_spelling(
    adapter: LoraAdapter,
    groups: KohyaGroups,
    weight_dtypes: dict[str, torch.dtype],
    effective_alphas: dict[str, float],
) -> None:
    """Store in the adapter's metadata how the file departs from :func:`default_spelling`.

    ``effective_alphas`` are the alphas the config gives each module. A stored ``.alpha``
    that differs from them (0, which kohya reads as the rank) is recorded to be written back.
    """
    default = default_spelling(adapter)
    record: dict[str, Any] = {}
    unet_namings = {naming for name, naming in groups.namings.items() if name.startswith("unet.")}
    if len(unet_namings) == 1 and unet_namings != {default.unet_naming}:
        record["unet_naming"] = unet_namings.pop()
    prefixes = {"lora_" + groups.keys[n].split("_")[1] for n in groups.keys if n.startswith("text_encoder.")}
    if len(prefixes) == 1 and prefixes != {default.text_encoder_prefix}:
        record["text_encoder_prefix"] = prefixes.pop()

    without_alpha = sorted(name for name, group in groups.modules.items() if "alpha" not in group)
    if without_alpha:
        record["without_alpha"] = without_alpha
    record.update(_alpha_dtype_record(groups, weight_dtypes))
    differing = {name: value for name, value in groups.stored_alphas.items()
                 if value != effective_alphas.get(name, value)}
    if differing:
        record["alphas"] = differing
    if record:
        adapter.metadata[SPELLING_KEY] = json.dumps(record, sort_keys=True, separators=(",", ":"))


def _alpha_dtype_record(groups: KohyaGroups, weight_dtypes: dict[str, torch.dtype]) -> dict[str, Any]:
    alpha_dtypes = {name: group["alpha"].dtype for name, group in groups.modules.items() if "alpha" in group}
    differing = {name: dtype for name, dtype in alpha_dtypes.items() if dtype != weight_dtypes[name]}
    if not differing:
        return {}
    shared = set(alpha_dtypes.values())
    if len(shared) == 1 and len(differing) == len(alpha_dtypes):
        return {"alpha_dtype": _dtype_name(shared.pop())}
    return {"alpha_dtypes": {name: _dtype_name(dtype) for name, dtype in sorted(differing.items())}}


def spelling_of(adapter: LoraAdapter) -> Spelling:
    """Return the spelling to write: the default, updated by the record in the metadata."""
    default = default_spelling(adapter)
    text = adapter.metadata.get(SPELLING_KEY)
    record = json.loads(text) if text else {}
    return Spelling(
        unet_naming=record.get("unet_naming", default.unet_naming),
        text_encoder_prefix=record.get("text_encoder_prefix", default.text_encoder_prefix),
        attention_up_blocks=default.attention_up_blocks,
        without_alpha=frozenset(record.get("without_alpha", ())),
        alpha_dtype=record.get("alpha_dtype"),
        alpha_dtypes=record.get("alpha_dtypes", {}),
        alphas=record.get("alphas", {}),
    )


def write_groups(
    adapter: LoraAdapter,
    parameters: Mapping[str, Mapping[str, torch.Tensor]],
    alphas: Mapping[str, float],
    weight_dtypes: Mapping[str, torch.dtype],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the kohya-keyed tensors and the header metadata for per-module parameters."""
    spelling = spelling_of(adapter)
    tensors = {}
    unspellable = []
    for name, group in sorted(parameters.items()):
        key = sd_naming.canonical_to_kohya(name, spelling.unet_naming, spelling.text_encoder_prefix,
                                           spelling.attention_up_blocks)
        if key is None:
            unspellable.append(name)
            continue
        for parameter, tensor in group.items():
            tensors[f"{key}.{parameter}"] = tensor
        if name not in spelling.without_alpha:
            tensors[f"{key}.alpha"] = spelling.alpha_tensor(name, alphas[name], weight_dtypes[name])
    if unspellable:
        shown = ", ".join(unspellable[:3]) + (f" and {len(unspellable) - 3} more" if len(unspellable) > 3 else "")
        raise ExportError(
            f"cannot write a kohya file: {len(unspellable)} modules have no kohya spelling "
            f"({shown}); kohya files name only modules of the SD UNet and CLIP text encoders "
            "(unet.… or text_encoder….), so export this adapter as peft or lora"
        )
    metadata = {key: value for key, value in adapter.metadata.items() if key != SPELLING_KEY}
    return tensors, metadata


def _kind_problem(name: str, kind: str) -> str:
    if kind in ("loha", "lokr"):
        return (f"module {name!r} is {kind}, which kohya LoRA keys cannot hold; export with "
                "--format lycoris, or compose it to convert it to LoRA")
    return f"module {name!r} is a {kind} module, which kohya LoRA keys cannot hold"


def _is_lycoris_key(key: str) -> bool:
    return ".hada_" in key or ".lokr_" in key


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
