"""PEFT adapter folders: ``adapter_config.json`` plus ``adapter_model.safetensors``.

``adapter_model.bin`` is read too, only through ``torch.load(weights_only=True)``, and never
written. Writing sorts the config keys and the tensors, so one adapter always gives the same
bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapterhub.adapter import LoraAdapter, validate_adapter, validate_config
from adapterhub.errors import AdapterFormatError
from adapterhub.formats.tensorfile import (
    canonical_config_bytes,
    read_safetensors,
    read_torch_bin,
    safetensors_bytes,
)

NAME = "peft"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
# Files kept beside the weights when a folder is imported: the author's model card.
COMPANION_NAMES = ("README.md",)


def detect(path: Path) -> bool:
    """Return whether ``path`` is a folder that contains a PEFT adapter config."""
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def source_files(path: Path) -> list[tuple[str, Path]]:
    """List the files that make up the adapter in ``path`` as (name in the store, file) pairs.

    The safetensors weights win over a ``.bin`` beside them; the model card comes along.
    """
    weights = _weights_file(path)
    files = [(CONFIG_NAME, path / CONFIG_NAME), (weights.name, weights)]
    files += [(name, path / name) for name in COMPANION_NAMES if (path / name).is_file()]
    return sorted(files)


def load(path: Path) -> LoraAdapter:
    """Read the adapter in folder ``path``.

    Raises :class:`AdapterFormatError` for a missing or malformed config or weights file, and
    :class:`UnsupportedAdapterError` for a config that is not a PEFT adapter.
    """
    files = {CONFIG_NAME: path / CONFIG_NAME}
    weights = _weights_file(path)
    files[weights.name] = weights
    return load_files(files, str(path))


def load_files(files: dict[str, Path], source: str) -> LoraAdapter:
    """Read an adapter from its files given by name, wherever they lie (store blobs, say)."""
    config = validate_config(read_config(files[CONFIG_NAME]), source)
    if WEIGHTS_NAME in files:
        tensors, metadata = read_safetensors(files[WEIGHTS_NAME])
    elif PICKLE_WEIGHTS_NAME in files:
        tensors, metadata = read_torch_bin(files[PICKLE_WEIGHTS_NAME]), {}
    else:
        raise AdapterFormatError(f"{source}: no {WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME}")
    return validate_adapter(LoraAdapter(config, tensors, metadata), source)


def read_config(path: Path) -> object:
    """Parse an ``adapter_config.json``; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot read the file ({exc.strerror})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc


def to_files(adapter: LoraAdapter) -> dict[str, bytes]:
    """Serialize ``adapter`` as the two files of a PEFT folder, deterministically."""
    metadata = {"format": "pt", **adapter.metadata}
    return {
        CONFIG_NAME: canonical_config_bytes(adapter.config),
        WEIGHTS_NAME: safetensors_bytes(adapter.tensors, metadata),
    }


def _weights_file(path: Path) -> Path:
    for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME):
        if (path / name).is_file():
            return path / name
    raise AdapterFormatError(
        f"{path}: no {WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME} beside {CONFIG_NAME}; "
        "copy the weights file into the folder"
    )
