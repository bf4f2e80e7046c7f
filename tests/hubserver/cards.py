"""Model card and safetensors metadata the Hub derives from a repo's files.

The README's YAML front matter is found with huggingface_hub's own `REGEX_YAML_BLOCK`, which a
comment in the client's source describes as the Hub's own expression. It is loaded with
`yaml.safe_load`, as `huggingface_hub.repocard` does. PyYAML is a dependency of huggingface_hub.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Iterable

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

# The client refuses safetensors headers longer than this (constants.SAFETENSORS_MAX_HEADER_LENGTH).
SAFETENSORS_MAX_HEADER_LENGTH = 25_000_000


class CardMetadataError(ValueError):
    """Raised when a README's YAML front matter is not valid YAML or not a mapping."""


def parse_front_matter(readme: str) -> dict[str, Any]:
    """Return the README's YAML front matter as a dict ({} when there is none).

    Raises CardMetadataError when the block is not valid YAML or not a mapping.
    """
    match = REGEX_YAML_BLOCK.search(readme)
    if match is None:
        return {}
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise CardMetadataError(f"Invalid YAML in README.md metadata: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardMetadataError(f"README.md metadata must be a YAML mapping, got {type(data).__name__}")
    return data


def validate_card(readme: str) -> list[str]:
    """Return the error messages for a README's metadata. An empty list means it is valid.

    Checks YAML syntax and the types of the keys the Hub indexes. The real Hub validates more
    (license ids, model-index structure).
    """
    try:
        data = parse_front_matter(readme)
    except CardMetadataError as exc:
        return [str(exc)]
    errors = []
    for key in ("library_name", "pipeline_tag", "license"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string, got {type(data[key]).__name__}')
    for key in ("tags", "datasets", "language", "base_model"):
        value = data.get(key)
        if value is not None and not isinstance(value, (str, list)):
            errors.append(f'"{key}" must be a string or a list of strings, got {type(value).__name__}')
    return errors


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return [str(value)]


def derive_tags(card: dict[str, Any], file_paths: Iterable[str]) -> list[str]:
    """Return the repo tags the Hub shows: the card's tags plus tags derived from metadata and files.

    NOTE: the Hub also infers `base_model_relation` when the card omits it; this server adds the
    `base_model:<relation>:<id>` tag only when the card sets the relation.
    """
    tags: list[str] = []
    if isinstance(card.get("library_name"), str):
        tags.append(card["library_name"])
    tags += _as_list(card.get("tags"))
    if isinstance(card.get("pipeline_tag"), str):
        tags.append(card["pipeline_tag"])
    if any(path.endswith(".safetensors") for path in file_paths):
        tags.append("safetensors")
    relation = card.get("base_model_relation")
    for base_model in _as_list(card.get("base_model")):
        tags.append(f"base_model:{base_model}")
        if isinstance(relation, str):
            tags.append(f"base_model:{relation}:{base_model}")
    tags += [f"dataset:{dataset}" for dataset in _as_list(card.get("datasets"))]
    tags += _as_list(card.get("language"))
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    return list(dict.fromkeys(tags))


def safetensors_header_length(prefix: bytes) -> int | None:
    """Return the JSON header length stored in a safetensors file's first 8 bytes, or None if invalid."""
    if len(prefix) < 8:
        return None
    (length,) = struct.unpack("<Q", prefix[:8])
    return length if 0 < length <= SAFETENSORS_MAX_HEADER_LENGTH else None


def safetensors_parameters(header: bytes) -> dict[str, int]:
    """Return the parameter count per dtype described by a safetensors JSON header.

    Raises ValueError when the header is not the JSON object safetensors writes.
    """
    tensors = json.loads(header)
    if not isinstance(tensors, dict):
        raise ValueError("safetensors header is not a JSON object")
    counts: dict[str, int] = {}
    for name, info in tensors.items():
        if name == "__metadata__":
            continue
        counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return counts
