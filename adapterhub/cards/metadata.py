"""The YAML metadata block of a card, built with huggingface_hub's ``ModelCardData``.

The block is never written by hand: the card's fields are collected into a dict, passed to
``ModelCardData`` and dumped by its ``to_yaml``, so the Hub's client reads back exactly what
was written. Values the user sets (``--set KEY=VALUE`` or the metadata given to ``add``) are
split here into card fields and details for the card's body.
"""

from __future__ import annotations

import logging
from typing import Any

from huggingface_hub import ModelCardData

from adapterhub.cards.basemodel import BaseModel
from adapterhub.cards.hub_ids import PIPELINE_TAGS
from adapterhub.errors import InvalidOptionError

logger = logging.getLogger(__name__)

# Keys that go into the YAML block when the user sets them; the rest appear in the body.
CARD_FIELDS = ("base_model", "datasets", "language", "license", "license_name", "license_link",
               "metrics", "pipeline_tag", "tags")
# Card fields that hold lists; a value set for them is split at commas.
LIST_FIELDS = ("datasets", "language", "metrics", "tags")
# Keys that shape the body of the card rather than its metadata.
BODY_FIELDS = ("title", "description")


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings into a dict; a later assignment of a key wins.

    Raises :class:`InvalidOptionError` naming every item without ``=`` or with an empty key.
    """
    values: dict[str, str] = {}
    invalid = []
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            invalid.append(repr(item))
            continue
        values[key.strip()] = value.strip()
    if invalid:
        raise InvalidOptionError(
            f"{', '.join(invalid)}: expected KEY=VALUE, for example --set license=apache-2.0"
        )
    return values


def split_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Split user values into card fields, body fields (title, description) and details."""
    fields: dict[str, Any] = {}
    body: dict[str, Any] = {}
    details: dict[str, str] = {}
    for key, value in sorted(values.items()):
        if key in CARD_FIELDS:
            fields[key] = _as_list(value) if key in LIST_FIELDS else value
        elif key in BODY_FIELDS:
            body[key] = str(value)
        else:
            details[key] = value if isinstance(value, str) else str(value)
    return fields, body, details


def card_data(
    existing: dict[str, Any],
    base: BaseModel,
    peft_type: str | None,
    task_type: str | None,
    method: str | None,
    fields: dict[str, Any],
) -> ModelCardData:
    """Build the card's metadata on top of an existing card's, without losing its fields.

    The existing card keeps its license, datasets, language, model-index and any other key.
    adapterhub sets ``library_name``, ``base_model`` (a Hub id, else left out),
    ``base_model_relation`` and adds its tags; ``pipeline_tag`` comes from the task type
    unless the card has one. User fields override all of these and add to the tags. Tags of
    the form ``base_model:…`` are dropped, because the Hub derives them from ``base_model`` and
    PEFT writes them with whatever name the base model was loaded by, local paths included.
    """
    data = dict(existing)
    data["library_name"] = "peft"
    if base.hub_id:
        data["base_model"] = base.hub_id
    else:
        data.pop("base_model", None)
        if base.recorded:
            logger.warning(
                "base model %r %s, so the card's metadata leaves base_model out; set it with "
                "--set base_model=OWNER/NAME", base.recorded, base.problem,
            )
    data["base_model_relation"] = "adapter"

    tags = [tag for tag in _as_list(existing.get("tags")) if not tag.startswith("base_model:")]
    tags += ["peft", *([peft_type.lower()] if peft_type else []), *([method] if method else [])]
    data["tags"] = tags + list(fields.get("tags", []))

    if not data.get("pipeline_tag") and task_type in PIPELINE_TAGS:
        data["pipeline_tag"] = PIPELINE_TAGS[task_type]
    data.update({key: value for key, value in fields.items() if key != "tags"})
    return ModelCardData(**data)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [str(item) for item in value]
