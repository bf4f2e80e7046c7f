"""Adapter file formats, one module each, with the same verbs.

Each format module has ``NAME`` and the functions ``detect(path)``, ``source_files(path)``,
``load(path)``, ``load_files(files, source)`` and ``to_files(adapter)``. :data:`FORMATS` is
the registry, in detection order: a folder with ``adapter_config.json`` is PEFT before
anything else, and kohya keys with LoHa or LoKr parameters are LyCORIS before kohya.
Stable Diffusion formats are described in docs/formats.md.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from adapterhub.adapter import LoraAdapter
from adapterhub.errors import AdapterFormatError
from adapterhub.formats import diffusers, kohya, lycoris, peft, single_file
from adapterhub.formats.sd_files import safetensors_keys, unrecognised_keys_error

FORMATS: dict[str, ModuleType] = {
    module.NAME: module for module in (peft, single_file, lycoris, kohya, diffusers)
}


def detect(path: Path) -> ModuleType:
    """Return the format module that reads ``path``.

    Raises :class:`AdapterFormatError` naming the path and the formats tried.
    """
    if not path.exists():
        raise AdapterFormatError(f"{path}: no such file or folder")
    for module in FORMATS.values():
        if module.detect(path):
            return module
    keys = safetensors_keys(path)
    if keys:
        raise unrecognised_keys_error(str(path), keys, _expected_families(keys))
    if path.is_dir():
        hint = f"expected {peft.CONFIG_NAME} or {diffusers.WEIGHTS_NAME} in the folder"
    else:
        hint = (f"expected a PEFT folder, a {single_file.SUFFIX} file or the .safetensors file "
                "of a kohya, LyCORIS or diffusers LoRA")
    raise AdapterFormatError(
        f"{path}: not a recognised adapter ({hint}); supported formats: {', '.join(FORMATS)}"
    )


def load(path: Path) -> LoraAdapter:
    """Detect the format of ``path`` and read the adapter."""
    return detect(path).load(path)


def get(name: str) -> ModuleType:
    """Return the format module called ``name``; an unknown name lists the valid ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise AdapterFormatError(
            f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}"
        ) from None


def _expected_families(keys: list[str]) -> str:
    if any(key.startswith("base_model.model.") for key in keys):
        return (f"a file with its config: a bare PEFT weights file needs its {peft.CONFIG_NAME}, "
                "so import the PEFT folder instead")
    return ("the keys of a PEFT, kohya, LyCORIS or diffusers LoRA (see docs/formats.md); "
            f"supported formats: {', '.join(FORMATS)}")
