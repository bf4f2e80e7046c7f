"""The ``.lora`` single-file format: one safetensors file that carries its own PEFT config.

The tensors sit under PEFT's key names; the safetensors ``__metadata__`` contains the config as
JSON under ``adapter_config`` and, for composed adapters, the recipe under
``adapterhub.lineage``. The file loads with ``safetensors.safe_open`` alone and converts to and
from a PEFT folder without loss.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapterhub.adapter import LoraAdapter, validate_adapter, validate_config
from adapterhub.errors import AdapterFormatError
from adapterhub.formats.tensorfile import read_safetensors, read_safetensors_metadata, safetensors_bytes

NAME = "lora"
SUFFIX = ".lora"
CONFIG_KEY = "adapter_config"
# The name the file has inside the store, whatever it was called on disk.
STORED_NAME = "adapter.lora"


def detect(path: Path) -> bool:
    """Return whether ``path`` is a ``.lora`` file, or a safetensors file with an embedded config."""
    if not path.is_file():
        return False
    if path.suffix == SUFFIX:
        return True
    if path.suffix != ".safetensors":
        return False
    try:
        return CONFIG_KEY in read_safetensors_metadata(path)
    except AdapterFormatError:
        return False


def source_files(path: Path) -> list[tuple[str, Path]]:
    """List the one file of the adapter as (name in the store, file)."""
    return [(STORED_NAME, path)]


def load(path: Path) -> LoraAdapter:
    """Read a ``.lora`` file; the config comes from its header metadata.

    Raises :class:`AdapterFormatError` when the file is not safetensors or has no valid config.
    """
    return load_files({STORED_NAME: path}, str(path))


def load_files(files: dict[str, Path], source: str) -> LoraAdapter:
    """Read a ``.lora`` adapter from its one file, given by its name in the store."""
    path = files[STORED_NAME]
    tensors, metadata = read_safetensors(path)
    text = metadata.pop(CONFIG_KEY, None)
    if text is None:
        raise AdapterFormatError(
            f"{path}: no '{CONFIG_KEY}' entry in the safetensors metadata, so the adapter "
            "config is unknown; import the PEFT folder it came from instead"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{path}: '{CONFIG_KEY}' metadata is not valid JSON ({exc.msg})") from exc
    config = validate_config(config, source)
    return validate_adapter(LoraAdapter(config, tensors, metadata), source)


def to_files(adapter: LoraAdapter) -> dict[str, bytes]:
    """Serialize ``adapter`` as one ``.lora`` file, deterministically."""
    config_text = json.dumps(adapter.config, sort_keys=True, separators=(",", ":"))
    metadata = {"format": "pt", **adapter.metadata, CONFIG_KEY: config_text}
    return {STORED_NAME: safetensors_bytes(adapter.tensors, metadata)}
