"""Resolve ``hf://OWNER/REPO[@REVISION]`` references to artifact ids.

Resolving a reference that this store already pulled reads its remote record and imports
neither torch nor the pull machinery, so ``show hf://...`` stays as fast as ``show NAME``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterhub.hub.client import HubClient
from adapterhub.hub.locations import parse_location
from adapterhub.hub.remotes import records_of

if TYPE_CHECKING:
    from adapterhub.library import Library


def resolve_reference(library: Library, text: str) -> str:
    """Return the artifact id of ``hf://OWNER/REPO[@REVISION]``, pulling it on first use.

    Once pulled, the reference resolves to the stored copy without asking the Hub; ``pull``
    or ``sync`` fetch a newer revision. Raises :class:`InvalidOptionError` for a malformed
    reference and the errors of :func:`adapterhub.hub.pull.pull`.
    """
    location = parse_location(text)
    record = records_of(library).get(HubClient().endpoint, location)
    if record is not None and library.store.has_artifact(record.artifact_id):
        return record.artifact_id

    from adapterhub.hub.pull import pull

    return pull(library, location).artifact_id
