"""Reading and writing tensor files: safetensors, weights-only ``.bin``, atomic output.

Every reader here translates the errors of safetensors and torch into
:class:`~adapterhub.errors.AdapterFormatError` naming the file, and every writer produces the
file under a temporary name and renames it into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from adapterhub.errors import AdapterFormatError, ExportError

# A safetensors header longer than this is refused before it is parsed. huggingface_hub uses
# 25,000,000 bytes for the same limit; an adapter header is a few hundred kilobytes at most.
MAX_HEADER_BYTES = 100_000_000


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """Return the ``__metadata__`` of a safetensors file without loading its tensors."""
    header = _read_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterFormatError(f"{path}: __metadata__ must map strings to strings")
    return metadata


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor of a safetensors file and its header metadata.

    Raises :class:`AdapterFormatError` for a truncated or malformed file.
    """
    metadata = read_safetensors_metadata(path)
    try:
        tensors = load_safetensors_bytes(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise AdapterFormatError(
            f"{path}: not a valid safetensors file ({exc}); the file may be truncated, "
            "download or save it again"
        ) from exc
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot read the file ({exc.strerror})") from exc
    return tensors, metadata


def read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """Load a PyTorch ``.bin`` state dict with ``weights_only=True``: tensors, never code.

    Raises :class:`AdapterFormatError` when the pickle holds anything but a flat mapping of
    names to tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise AdapterFormatError(
            f"{path}: cannot be loaded as a weights-only PyTorch file ({_first_line(exc)}); "
            "convert it to safetensors with the tool that trained it"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise AdapterFormatError(
            f"{path}: expected a mapping of tensor names to tensors, found {type(state).__name__}"
        )
    return state


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialize tensors as safetensors, deterministically: same input, same bytes.

    The safetensors library writes ``__metadata__`` in hash-map order, which changes from one
    process to the next, so the header is built here: keys sorted, compact JSON, padded with
    spaces to a multiple of 8 bytes, tensors laid out in key order.
    """
    entries: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    chunks = []
    offset = 0
    for key, tensor in sorted(tensors.items()):
        data = _tensor_bytes(tensor)
        entries[key] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(chunks)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype not in _SAFETENSORS_DTYPES:
        raise AdapterFormatError(f"dtype {tensor.dtype} cannot be written to safetensors")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {exc.strerror}; check the folder's permissions "
                          "and free space") from exc


def canonical_config_bytes(config: dict) -> bytes:
    """Serialize an adapter config as PEFT does: sorted keys, two-space indent."""
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _read_header(path: Path) -> dict:
    try:
        with path.open("rb") as stream:
            prefix = stream.read(8)
            size = path.stat().st_size
            if len(prefix) < 8:
                raise AdapterFormatError(
                    f"{path}: {size} bytes is too short for a safetensors file; it is truncated"
                )
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise AdapterFormatError(
                    f"{path}: header length {length} exceeds the file ({size} bytes) or the "
                    f"limit of {MAX_HEADER_BYTES} bytes; the file is truncated or not safetensors"
                )
            raw = stream.read(length)
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot read the file ({exc.strerror})") from exc

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{path}: the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{path}: the safetensors header must be a JSON object")
    return header


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
