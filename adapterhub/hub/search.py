"""Search the Hub for PEFT adapters, optionally of one base model."""

from __future__ import annotations

from typing import Any

from adapterhub.errors import InvalidOptionError
from adapterhub.hub.client import HubClient

# Tags the Hub gives adapter repos: the library name, and one naming the base model and the
# relation to it (set from the card's base_model and base_model_relation).
PEFT_TAG = "peft"
ADAPTER_BASE_TAG = "base_model:adapter:"
BASE_TAG = "base_model:"


def search_hub(query: str | None = None, base_model: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Return up to ``limit`` PEFT adapter repos whose id contains ``query``.

    Each row has ``id``, ``base_model`` (from the repo's tags, or None), ``downloads``,
    ``likes``, ``tags``, ``pipeline_tag``, ``created_at``, ``private`` and ``gated``. Raises
    :class:`InvalidOptionError` for a limit below 1 and :class:`HubError` leaves when the Hub
    cannot be searched.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidOptionError(f"limit {limit!r} is invalid; expected a positive integer")
    filters = [PEFT_TAG] + ([ADAPTER_BASE_TAG + base_model] if base_model else [])
    client = HubClient()
    client.require_online("search the Hub")
    rows = client.search(query, filters, limit)
    for row in rows:
        row["base_model"] = base_model_of(row["tags"])
    return rows


def base_model_of(tags: list[str]) -> str | None:
    """Return the base model named by a repo's ``base_model:`` tags, preferring the adapter one."""
    for tag in tags:
        if tag.startswith(ADAPTER_BASE_TAG):
            return tag[len(ADAPTER_BASE_TAG):]
    for tag in tags:
        # base_model:<relation>:<id> tags have a second colon; base_model:<id> has none after it.
        if tag.startswith(BASE_TAG) and ":" not in tag[len(BASE_TAG):]:
            return tag[len(BASE_TAG):]
    return None
