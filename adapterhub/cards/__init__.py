"""Model cards for stored adapters: README.md rendered from the store and checked for the Hub.

:func:`render_card` states what the store records about an adapter (configuration, files with
sha256, the composition recipe or the stack's components, a PEFT loading snippet) through a
Jinja2 template, under a YAML block built by huggingface_hub's ``ModelCardData``.
:func:`validate_card` is the one check every card passes before an upload. Both raise
:class:`~adapterhub.errors.CardError`, which names the offending field or template variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from adapterhub.cards import context
from adapterhub.cards.basemodel import BaseModel, resolve_base_model
from adapterhub.cards.merge import BEGIN_MARKER, END_MARKER, merge_body
from adapterhub.cards.metadata import card_data, parse_assignments, split_values
from adapterhub.cards.templates import render_body
from adapterhub.cards.validation import field_problems, validate_card
from adapterhub.errors import CardError
from adapterhub.render import ID_WIDTH

if TYPE_CHECKING:
    from adapterhub.library import Library

__all__ = ["BEGIN_MARKER", "END_MARKER", "CardError", "parse_assignments", "read_card",
           "render_card", "validate_card", "write_card"]


def render_card(
    library: Library,
    reference: str,
    template: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    existing: str | None = None,
    *,
    repo_id: str | None = None,
) -> str:
    """Render the README.md model card of the stored artifact ``reference``; return its text.

    ``template`` is a Jinja2 file used instead of the packaged one. ``overrides`` are user
    values (``--set``): card fields such as ``license`` or ``datasets`` go into the YAML block,
    ``title`` and ``description`` shape the body, any other key is listed in the body. They win
    over the artifact's annotations in the store, which are used the same way.

    ``existing`` is the card to update (the README on the Hub): its prose and its metadata,
    model-index included, are kept, and only adapterhub's marked block is replaced. ``None``
    means the README.md stored with the adapter, if any; pass ``""`` to start from nothing.
    ``repo_id`` names the Hub repo in the loading snippet.

    The same artifact and arguments always give the same text. Raises :class:`CardError`
    for template errors and for metadata the Hub would reject (see :func:`validate_card`).
    """
    details = library.show(reference)
    if existing is None:
        existing = stored_readme(library, details["files"])
    existing_data, existing_body, key_order = parse_card(existing)

    values = {**user_metadata(library, details["id"]), **(overrides or {})}
    fields, body_values, user_details = split_values(values)
    facts = card_facts(library, details, existing_data, repo_id, fields.get("base_model"))
    variables = facts.variables
    variables.update(title=body_values.get("title") or variables["title"],
                     description=body_values.get("description"), details=user_details)
    data = card_data(existing_data, facts.base, facts.peft_type, facts.task_type, facts.method,
                     fields)
    variables["card_data"] = data.to_dict()

    body = merge_body(existing_body, render_body(variables, template), f"# {variables['title']}")
    text = f"---\n{data.to_yaml(original_order=key_order)}\n---\n\n{body.lstrip()}"
    validate_card(text)
    return text


@dataclass(frozen=True)
class CardFacts:
    """Facts the store records about one artifact: template variables and metadata inputs."""

    variables: dict[str, Any]
    base: BaseModel
    peft_type: str | None
    task_type: str | None
    method: str | None


def card_facts(library: Library, details: dict[str, Any], existing_data: dict[str, Any],
               repo_id: str | None, base_model: str | None = None) -> CardFacts:
    """Gather the template variables of one artifact (docs/cards.md lists them).

    ``base_model`` is a Hub id the user set; it replaces the one derived from the store.
    """
    metadata = details["metadata"]
    name = _name(details["refs"])
    is_stack = details["kind"] == "stack"
    repos = context.hub_repos(library)
    stack = context.stack(library, repos, metadata) if is_stack else None
    components = stack["components"] if stack else []

    recorded = metadata.get("base_model") or _common(components, "base_model")
    task_type = metadata.get("task_type") or _common(components, "task_type")
    base = resolve_base_model(recorded, existing_data.get("base_model"))
    if base_model:
        base = BaseModel(recorded, base_model, None)
    lineage = metadata.get("lineage")
    config = None if is_stack else context.stored_config(library, details["files"])
    variables = {
        "title": name or f"Adapter sha256:{details['id'][:ID_WIDTH]}",
        "description": None,
        "artifact": {"id": details["id"], "short_id": details["id"][:ID_WIDTH],
                     "kind": details["kind"], "refs": details["refs"],
                     "format": metadata.get("format")},
        "base_model": {"recorded": base.recorded, "hub_id": base.hub_id, "problem": base.problem},
        "config": None if is_stack else context.configuration(metadata, config),
        "files": context.file_rows(details["files"]),
        "recipe": context.recipe(library, repos, lineage, name) if lineage else None,
        "stack": stack,
        "loading": context.loading(details, base, repo_id or repos.get(details["id"]),
                                   task_type, name),
        "metadata": metadata,
        "begin_marker": BEGIN_MARKER,
        "end_marker": END_MARKER,
    }
    peft_type = metadata.get("peft_type") or _common(components, "peft_type")
    return CardFacts(variables, base, peft_type, task_type,
                     method=lineage.get("method") if lineage else None)


def parse_card(text: str) -> tuple[dict[str, Any], str, list[str]]:
    """Split a README.md into its metadata (as huggingface_hub reads it), body and key order.

    The key order is the YAML block's, so a card rendered again keeps its keys in place.
    Raises :class:`CardError` when huggingface_hub cannot read the metadata.
    """
    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        return {}, text, []
    written: Any = None
    try:
        written = yaml.safe_load(match.group(2)) or {}
        card = ModelCard(text)
    except (ValueError, yaml.YAMLError) as exc:
        # Name the offending fields where they can be found; else pass on the parser's words.
        problems = field_problems(written) if isinstance(written, dict) else []
        listing = "; ".join(f"{field}: {problem}" for field, problem in problems) or str(exc)
        raise CardError(
            f"the existing card's metadata cannot be read: {listing}; fix its YAML block, or "
            "render without the existing card (--fresh)",
            tuple(field for field, _ in problems) or ("metadata",),
        ) from exc
    return card.data.to_dict(), card.text, list(written)


def stored_readme(library: Library, files: list[dict[str, Any]]) -> str:
    """Return the README.md stored with an adapter (its author's card), or ``""``."""
    for entry in files:
        if entry["path"] == context.README_NAME:
            return library.store.blobs.read_bytes(entry["sha256"]).decode("utf-8", errors="replace")
    return ""


def read_card(path: Path) -> str | None:
    """Return the text of the card file at ``path``, or None when there is no file.

    Raises :class:`CardError` when the file exists but cannot be read as UTF-8 text.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise CardError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "pass --fresh to replace it", ("output",)) from exc
    except OSError as exc:
        raise CardError(f"cannot read {path} ({exc.strerror})", ("output",)) from exc


def write_card(path: Path, text: str) -> None:
    """Write a card to ``path`` under a temporary name, then rename it into place.

    Raises :class:`CardError` when the folder cannot be written.
    """
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, path)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise CardError(f"cannot write {path} ({exc.strerror}); choose a writable path",
                        ("output",)) from exc


def user_metadata(library: Library, artifact_id: str) -> dict[str, str]:
    """Return the values a user attached to the artifact: its annotations in the store."""
    return dict(library.store.annotations(artifact_id))


def _name(refs: list[str]) -> str | None:
    if not refs:
        return None
    return refs[0].removesuffix(":latest")


def _common(rows: list[dict[str, Any]], key: str) -> Any:
    """Return the value every row has for ``key``, or None when they differ or lack it."""
    values = {row.get(key) for row in rows}
    return values.pop() if len(values) == 1 else None
