"""Stacks: weighted lists of stored adapters that stay separate until someone merges them.

A stack is a store artifact of kind ``stack``. Its one file, ``stack.json``, lists the
components in order with the name each gets as a PEFT adapter, the folder it is exported to,
its weight and its artifact id. The manifest repeats them in its metadata and names the
components as parents, so ``gc`` keeps them. Export writes one PEFT folder per component next
to ``stack.json``. This module imports no torch: ``show`` and ``ls`` read stacks too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from adapterhub.errors import AdapterFormatError

STACK_KIND = "stack"
STACK_FILE = "stack.json"
STACK_VERSION = 1
SUPPORTED_VERSIONS = (1,)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class StackComponent:
    """One adapter of a stack: its artifact id, PEFT adapter name (and folder), and weight."""

    artifact_id: str
    name: str
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.artifact_id, "name": self.name, "path": self.name, "weight": self.weight}


def component_names(labels: Sequence[str]) -> list[str]:
    """Derive a unique PEFT adapter name, also a folder name, from each component's label.

    The name is the last path segment of the label without a ``:tag`` or ``.lora`` suffix,
    with every run of characters other than letters, digits, ``_`` and ``-`` replaced by
    ``_``. Repeats get ``_2``, ``_3``, and a label with nothing usable left (or an id)
    becomes ``adapter_N``.
    """
    names: list[str] = []
    for position, label in enumerate(labels, start=1):
        base = label.rstrip("/").rsplit("/", 1)[-1].split(":", 1)[0]
        base = base.removesuffix(".lora")
        base = _UNSAFE.sub("_", base).strip("_") or f"adapter_{position}"
        if base.startswith("sha256"):
            base = f"adapter_{position}"
        candidate, suffix = base, 2
        while candidate in names:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        names.append(candidate)
    return names


def stack_document(components: Sequence[StackComponent], base_model: str | None) -> dict[str, Any]:
    """Return the contents of ``stack.json``."""
    return {
        "adapterhub_stack": STACK_VERSION,
        "base_model": base_model,
        "adapters": [component.to_dict() for component in components],
    }


def stack_bytes(document: dict[str, Any]) -> bytes:
    """Serialize ``stack.json`` deterministically: sorted keys, two-space indent."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def stack_metadata(document: dict[str, Any]) -> dict[str, Any]:
    """Return the manifest metadata of a stack: the components and the base model."""
    return {
        "format": STACK_KIND,
        "stack_version": document["adapterhub_stack"],
        "base_model": document["base_model"],
        "components": document["adapters"],
        "description": "stack of " + ", ".join(
            f"{adapter['weight']:g} × {adapter['name']}" for adapter in document["adapters"]
        ),
    }


def read_components(metadata: dict[str, Any], source: str) -> list[StackComponent]:
    """Return the components listed in a stack's manifest metadata.

    Raises :class:`AdapterFormatError` naming ``source`` when the list is missing or malformed,
    or when the stack was written in a version this adapterhub does not read.
    """
    version = metadata.get("stack_version")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(number) for number in SUPPORTED_VERSIONS)
        raise AdapterFormatError(
            f"{source}: stack version {version!r} is not supported (supported: {supported}); "
            "upgrade adapterhub"
        )
    entries = metadata.get("components")
    if not isinstance(entries, list) or not entries:
        raise AdapterFormatError(f"{source}: the stack lists no components; create it again with adapterhub stack")
    try:
        return [StackComponent(entry["id"], entry["name"], float(entry["weight"])) for entry in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFormatError(
            f"{source}: a stack component lacks an id, name or numeric weight ({exc}); "
            "create the stack again with adapterhub stack"
        ) from exc


def stack_details(details: dict[str, Any]) -> str:
    """Render ``show`` output for a stack: identity, base model and the components."""
    metadata = details["metadata"]
    lines = [
        f"id:          {details['id']}",
        f"references:  {', '.join(details['refs']) or '-'}",
        f"kind:        {STACK_KIND} of {len(metadata.get('components') or [])} adapters "
        "(export writes one PEFT folder each and stack.json)",
        f"base model:  {metadata.get('base_model') or '-'}",
        "components:",
    ]
    lines += [
        f"  {component['weight']:+g} × {component['name']}  sha256:{component['id'][:12]}"
        for component in metadata.get("components") or []
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class StackOutcome:
    """A stored stack, or with ``materialize`` the stored exact ``cat`` adapter."""

    artifact_id: str
    reference: str | None
    kind: str
    components: tuple[StackComponent, ...]


def create_stack(library, references: Sequence[str], weights: Sequence[float] | None,
                 name: str | None, materialize: bool, allow_base_mismatch: bool = False,
                 keep_head: str | None = None) -> StackOutcome:
    """Store ``references`` with ``weights`` as a stack, or as their exact sum with ``materialize``.

    Components given as paths are added to the store; stacks among the references are
    flattened, their weights multiplying. The components must compose (plain LoRA or
    AdaLoRA, one base model, equal shapes, no conflicting heads), which is checked before
    anything is written. Raises the errors of :func:`adapterhub.compose.engine.compose`.
    """
    from adapterhub.compose.options import ComposeOptions

    options = ComposeOptions(weights=tuple(weights) if weights is not None else None,
                             allow_base_mismatch=allow_base_mismatch, keep_head=keep_head)
    if materialize:
        return _materialize(library, references, options, name)

    entries, options = expand_stacks(library, references, options)
    resolved = [library._compose_input(reference, label) for reference, label in entries]
    inputs = [item for item, _ in resolved]
    _check_components(inputs, options)

    for _, path in resolved:
        if path is not None:
            library.add(path)
    names = component_names([item.label for item in inputs])
    components = tuple(
        StackComponent(item.artifact_id, component, weight)
        for item, component, weight in zip(inputs, names, options.weights_for(len(inputs)))
    )
    base_model = next((item.adapter.base_model for item in inputs if item.adapter.base_model), None)
    artifact_id = _store_stack(library, stack_document(components, base_model))
    reference = None
    if name is not None:
        from adapterhub.library import parse_name

        target = parse_name(name)
        library.store.set_ref(target.name, target.tag, artifact_id)
        reference = str(target)
    return StackOutcome(artifact_id, reference, STACK_KIND, components)


def _materialize(library, references: Sequence[str], options, name: str | None) -> StackOutcome:
    """Store the exact ``cat`` adapter of the components instead of a stack."""
    outcome = library.compose(references, options, name=name)
    parents = outcome.lineage["parents"]
    names = component_names([parent["label"] for parent in parents])
    components = tuple(
        StackComponent(parent["id"], component, parent["weight"])
        for parent, component in zip(parents, names)
    )
    return StackOutcome(outcome.artifact_id, outcome.reference, "adapter", components)


def _check_components(inputs, options) -> None:
    """Run the checks of a composition, so a stack that could not be merged is never stored."""
    from adapterhub.compose.engine import (
        check_base_families,
        check_base_models,
        check_composable,
        plan_modules,
    )
    from adapterhub.compose.heads import merge_heads

    check_composable(inputs)
    check_base_models(inputs, allow_mismatch=options.allow_base_mismatch)
    check_base_families(inputs, allow_mismatch=options.allow_base_mismatch)
    plan_modules(inputs)
    merge_heads(inputs, keep_head=options.keep_head)


def expand_stacks(library, references: Sequence[str], options):
    """Replace each stack among ``references`` by its components.

    Returns ``(entries, options)``: entries are ``(reference, label)`` pairs, a component
    labelled ``STACK/NAME``, and options whose weights are one per entry, a component's being
    its weight in the stack times the weight given for the stack. Paths are never stacks.
    """
    from dataclasses import replace
    from pathlib import Path

    weights = options.weights_for(len(references))
    entries: list[tuple[str, str]] = []
    expanded: list[float] = []
    for reference, weight in zip(references, weights):
        components = None if Path(reference).exists() else _stack_components(library, reference)
        if components is None:
            entries.append((reference, reference))
            expanded.append(weight)
            continue
        for component in components:
            entries.append((f"sha256:{component.artifact_id}", f"{reference}/{component.name}"))
            expanded.append(weight * component.weight)
    if len(entries) == len(references):
        return entries, options
    return entries, replace(options, weights=tuple(expanded))


def stack_contents(library, manifest, source: str) -> dict[str, bytes]:
    """Return the exported files of a stack: ``stack.json`` and one PEFT folder per component."""
    components = read_components(manifest.metadata, source)
    (entry,) = [entry for entry in manifest.files if entry.path == STACK_FILE]
    contents = {STACK_FILE: library.store.blobs.read_bytes(entry.sha256)}
    for component in components:
        for relpath, data in library._export_contents(component.artifact_id, "peft").items():
            contents[f"{component.name}/{relpath}"] = data
    return contents


def _stack_components(library, reference: str) -> list[StackComponent] | None:
    artifact_id = library.resolve(reference)
    manifest = library.store.manifest(artifact_id)
    if manifest.kind != STACK_KIND:
        return None
    return read_components(manifest.metadata, f"{reference} ({artifact_id[:12]})")


def _store_stack(library, document: dict[str, Any]) -> str:
    import tempfile
    from pathlib import Path

    parents = [adapter["id"] for adapter in document["adapters"]]
    with tempfile.TemporaryDirectory(prefix="adapterhub-stack-") as folder:
        path = Path(folder) / STACK_FILE
        path.write_bytes(stack_bytes(document))
        return library.store.add_artifact(STACK_KIND, [(STACK_FILE, path)], stack_metadata(document),
                                          parents=parents)
