"""Tensor files of the Stable Diffusion formats: key listing and the unrecognised-key error.

Detection looks only at tensor names, which safetensors keeps in its header, so telling
formats apart never loads tensor data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from safetensors import SafetensorError, safe_open

from adapterhub.errors import AdapterFormatError, UnsupportedAdapterError

# How many unrecognised keys an error message lists.
LISTED_KEYS = 5
SAFETENSORS_SUFFIX = ".safetensors"


def safetensors_keys(path: Path) -> list[str] | None:
    """Return the sorted tensor names of a safetensors file, or None when it is not one."""
    if not path.is_file() or path.suffix != SAFETENSORS_SUFFIX:
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return sorted(handle.keys())
    except (SafetensorError, OSError, ValueError):
        return None


def unrecognised_keys_error(source: str, keys: Iterable[str], expected: str) -> UnsupportedAdapterError:
    """Return the error for tensor keys that no key family of the format explains.

    ``expected`` describes the keys the format reads, for the message.
    """
    keys = sorted(keys)
    listed = ", ".join(keys[:LISTED_KEYS])
    more = f" and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
    return UnsupportedAdapterError(
        f"{source}: {len(keys)} tensor keys match no known key family: {listed}{more}; "
        f"expected {expected}"
    )


def module_problems_error(source: str, problems: list[str]) -> AdapterFormatError:
    """Return the error that lists every module problem found in a file."""
    return AdapterFormatError(f"{source}: invalid modules:\n  " + "\n  ".join(problems))
