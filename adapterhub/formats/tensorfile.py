"""Reading and writing tensor files: safetensors, weights-only ``.bin``, atomic output.

Every reader here translates the errors of safetensors and torch into
:class:`~adapterhub.errors.AdapterFormatError` naming the file, and every writer produces the
file under a temporary name and renames it into place, so a reader never sees half a file.

Files come from strangers, so a safetensors header is checked here before safetensors parses
the bytes: its length against the file and ``MAX_HEADER_BYTES``, duplicate names, and for
every tensor a known dtype, a shape of non-negative integers, and data offsets that lie in
the data section, tile it without gaps or overlaps, and hold exactly dtype size × shape bytes.
"""

from __future__ import annotations

import json
import math
import os
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
    return _header_metadata(path, _read_header(path)[0])


def _header_metadata(path: Path, header: dict) -> dict[str, str]:
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterFormatError(f"{path}: __metadata__ must map strings to strings")
    return dict(metadata)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor of a safetensors file and its header metadata.

    Raises :class:`AdapterFormatError` for a truncated or malformed file, naming each
    tensor whose header entry is invalid.
    """
    header, data_length = _read_header(path)
    metadata = _header_metadata(path, header)
    check_tensor_entries(path, header, data_length)
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

    Raises :class:`AdapterFormatError` when the pickle refers to anything that
    ``weights_only`` does not allow (functions, classes, modules), is damaged, or contains
    anything but a flat mapping of names to tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot read the file ({exc.strerror})") from exc
    except Exception as exc:
        # torch.load reports damaged files with whatever its unpickler or zip reader raised
        # (UnpicklingError, RuntimeError, KeyError, zipfile.BadZipFile, ...), so every
        # exception from it means the file cannot be read.
        raise AdapterFormatError(
            f"{path}: cannot be loaded as a weights-only PyTorch file ({_first_line(exc)}); "
            "convert it to safetensors with the tool that trained it"
        ) from exc
    if not isinstance(state, dict):
        raise AdapterFormatError(
            f"{path}: expected a mapping of tensor names to tensors, found {type(state).__name__}"
        )
    wrong = [
        f"{key!r} ({type(value).__name__})"
        for key, value in state.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if wrong:
        raise AdapterFormatError(
            f"{path}: expected a mapping of tensor names to tensors, but these entries are not "
            f"tensors under string names: {_some(wrong, ', ')}; save only the adapter's state dict"
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


# Bytes per element of each dtype that safetensors writes and torch reads.
_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}

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
        # mkstemp creates the file with mode 0600; give it the mode a plain open() would.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {exc.strerror}; check the folder's permissions "
                          "and free space") from exc


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def canonical_config_bytes(config: dict) -> bytes:
    """Serialize an adapter config as PEFT does: sorted keys, two-space indent."""
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def check_tensor_entries(path: Path, header: dict, data_length: int) -> None:
    """Check every tensor entry of a safetensors header against the data section.

    ``data_length`` is the number of bytes after the header. Raises
    :class:`AdapterFormatError` listing every entry with an unknown dtype, a malformed shape
    or offsets, a byte count that disagrees with dtype and shape, and every gap, overlap or
    offset past the end of the data.
    """
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        problem, span = _entry_problem(key, entry)
        if problem:
            problems.append(problem)
        else:
            spans.append((*span, key))
    truncated = False
    if not problems:
        # Gaps and overlaps are checked only among valid entries, so one bad entry does not
        # also show up as a gap.
        problems, truncated = _layout_problems(sorted(spans), data_length)
    if not problems:
        return

    if truncated:
        advice = "the file may be truncated, download or save it again"
    else:
        advice = "the file is damaged or was not written by a safetensors writer; save it again"
    raise AdapterFormatError(f"{path}: not a valid safetensors file ({_some(problems)}); {advice}")


def _entry_problem(key: str, entry: object) -> tuple[str | None, tuple[int, int]]:
    """Describe what is wrong with one header entry, or return its (begin, end) offsets."""
    if not isinstance(entry, dict) or sorted(entry) != ["data_offsets", "dtype", "shape"]:
        return f"tensor {key!r} is not an object with dtype, shape and data_offsets", (0, 0)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPE_SIZES:
        return f"tensor {key!r} has dtype {dtype!r}; expected one of {', '.join(_DTYPE_SIZES)}", (0, 0)
    if not isinstance(shape, list) or not all(_is_count(size) for size in shape):
        return f"tensor {key!r} has shape {shape!r}; expected a list of non-negative integers", (0, 0)
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
            or offsets[0] > offsets[1]):
        return (f"tensor {key!r} has data_offsets {offsets!r}; expected [begin, end] with "
                "0 <= begin <= end"), (0, 0)

    expected = math.prod(shape) * _DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        return (f"tensor {key!r} has dtype {dtype} and shape {shape}, which take {expected} bytes, "
                f"but its data_offsets {offsets} hold {offsets[1] - offsets[0]}"), (0, 0)
    return None, (offsets[0], offsets[1])


def _layout_problems(spans: list[tuple[int, int, str]], data_length: int) -> tuple[list[str], bool]:
    """Find gaps, overlaps and offsets past the end among sorted (begin, end, name) spans.

    Returns the problems and whether the data section is shorter than the tensors need.
    """
    problems = []
    position, previous = 0, None
    for begin, end, key in spans:
        if begin < position:
            problems.append(f"tensor {key!r} (bytes {begin}-{end}) overlaps tensor {previous!r}")
        elif begin > position:
            problems.append(f"bytes {position}-{begin} before tensor {key!r} belong to no tensor")
        position, previous = max(position, end), key
    truncated = position > data_length
    if truncated:
        problems.append(f"tensor {previous!r} ends at byte {position} of the data, but the file "
                        f"has only {data_length} data bytes")
    elif position < data_length:
        problems.append(f"the last {data_length - position} data bytes belong to no tensor")
    return problems, truncated


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _some(items: list[str], separator: str = "; ", limit: int = 5) -> str:
    """Join the first ``limit`` items, saying how many more there are."""
    shown = separator.join(items[:limit])
    return shown if len(items) <= limit else f"{shown}{separator}and {len(items) - limit} more"


def _reject_duplicate_names(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    duplicates: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            duplicates.add(name)
        seen.add(name)
    if duplicates:
        raise ValueError(f"the header names {', '.join(map(repr, sorted(duplicates)))} more than once")
    return dict(pairs)


def _read_header(path: Path) -> tuple[dict, int]:
    """Return the parsed header of a safetensors file and the length of its data section."""
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
        header = json.loads(raw, object_pairs_hook=_reject_duplicate_names)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdapterFormatError(f"{path}: the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{path}: the safetensors header must be a JSON object")
    return header, size - 8 - length


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_folder_files(folder: Path, files: list[tuple[str, Path]]) -> None:
    """Reject files of an adapter folder that are symbolic links leading out of the folder.

    An adapter folder from an archive or a stranger's repository could contain
    ``adapter_config.json -> ~/.ssh/id_rsa``. Importing it would copy that file into the
    store, and a later push would publish it. Links that stay inside the folder are fine, and
    so are the links of a Hugging Face cache snapshot (``snapshots/<rev>/…`` pointing into the
    repo's ``blobs/``). Raises :class:`AdapterFormatError` naming every such file.
    """
    root = folder.resolve()
    allowed = [root]
    if folder.parent.name == "snapshots":
        allowed.append(folder.parent.parent.resolve() / "blobs")
    outside = []
    for _, path in files:
        target = path.resolve()
        if not any(target == base or base in target.parents for base in allowed):
            outside.append(f"{path} -> {target}")
    if outside:
        raise AdapterFormatError(
            f"{folder}: {', '.join(outside)} leads outside the adapter folder; copy the real "
            "files into the folder (cp -L) if you mean to import them"
        )
