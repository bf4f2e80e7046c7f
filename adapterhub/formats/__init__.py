"""Adapter file formats, one module each, with the same verbs.

Each format module has ``NAME`` and the functions ``detect(path)``, ``source_files(path)``,
``load(path)`` and ``to_files(adapter)``. :data:`FORMATS` is the registry, in detection order.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from adapterhub.adapter import LoraAdapter
from adapterhub.errors import AdapterFormatError
from adapterhub.formats import peft, single_file

FORMATS: dict[str, ModuleType] = {module.NAME: module for module in (peft, single_file)}


def detect(path: Path) -> ModuleType:
    """Return the format module that reads ``path``.

    Raises :class:`AdapterFormatError` naming the path and the formats tried.
    """
    if not path.exists():
        raise AdapterFormatError(f"{path}: no such file or folder")
    for module in FORMATS.values():
        if module.detect(path):
            return module
    if path.is_dir():
        hint = f"expected {peft.CONFIG_NAME} in the folder"
    else:
        hint = f"expected a PEFT folder or a {single_file.SUFFIX} file"
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
