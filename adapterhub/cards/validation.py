"""Checks that a README.md card would pass the Hub, run before any upload.

The metadata must parse through huggingface_hub's ``ModelCard`` and come back unchanged, and the
fields the Hub validates must hold values it accepts. Each problem names its field (``license``,
``model-index[0].results[0].dataset.config``), and all problems are reported at once.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from adapterhub.cards.basemodel import hub_id_problem
from adapterhub.cards.hub_ids import BASE_MODEL_RELATIONS, HUB_LICENSES
from adapterhub.errors import CardError

LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"
_STRING_FIELDS = ("library_name", "pipeline_tag", "license_name", "license_link")
_STRING_OR_LIST_FIELDS = ("datasets", "language", "metrics", "tags")
_EXPECTED = {str: "a string", bool: "true or false"}


def validate_card(text: str) -> None:
    """Check a README.md card the way the Hub would before it is uploaded.

    Raises :class:`CardError` when the YAML block is not a mapping, when huggingface_hub reads
    the metadata back differently from what is written, when ``base_model`` is a local path or
    not a Hub model id, when ``license`` is not one of the Hub's license ids, or when
    ``model-index`` breaks the Hub's schema (a dataset ``config`` that is not a string, say).
    The message lists every problem with its field; ``CardError.fields`` has the field names.
    A card without a YAML block passes, since the Hub accepts one.
    """
    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        return
    metadata = _load_yaml(match.group(2))
    problems = field_problems(metadata)
    if not problems:
        problems = _round_trip_problems(text, metadata)
    if problems:
        listing = "; ".join(f"{field}: {problem}" for field, problem in problems)
        raise CardError(f"the model card's metadata would be rejected: {listing}",
                        tuple(field for field, _ in problems))


def field_problems(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (field, problem) for each metadata value the Hub would reject."""
    problems = _base_model_problems(metadata.get("base_model"))
    relation = metadata.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        problems.append(("base_model_relation", f"{relation!r} is not one of "
                         f"{', '.join(BASE_MODEL_RELATIONS)}"))
    if "license" in metadata:
        problems += _license_problems(metadata["license"])
    for key in _STRING_FIELDS:
        if key in metadata and not isinstance(metadata[key], str):
            problems.append((key, f"expected a string, found {_describe(metadata[key])}"))
    for key in _STRING_OR_LIST_FIELDS:
        value = metadata.get(key)
        if value is not None and not _is_string_or_strings(value):
            problems.append((key, f"expected a string or a list of strings, found {_describe(value)}"))
    if "model-index" in metadata:
        problems += model_index_problems(metadata["model-index"])
    return problems


def model_index_problems(model_index: Any) -> list[tuple[str, str]]:
    """Check ``model-index`` against the Hub's schema; return (field path, problem) pairs."""
    if not isinstance(model_index, list) or not model_index:
        return [("model-index", f"expected a non-empty list, found {_describe(model_index)}")]
    problems: list[tuple[str, str]] = []
    for index, entry in enumerate(model_index):
        where = f"model-index[{index}]"
        if not isinstance(entry, dict):
            problems.append((where, f"expected a mapping, found {_describe(entry)}"))
            continue
        problems += _check_keys(entry, where, required={"name": str}, optional={})
        results = entry.get("results")
        if not isinstance(results, list):
            problems.append((f"{where}.results", f"expected a list, found {_describe(results)}"))
            continue
        for number, result in enumerate(results):
            problems += _result_problems(result, f"{where}.results[{number}]")
    return problems


def _result_problems(result: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(result, dict):
        return [(where, f"expected a mapping, found {_describe(result)}")]
    problems = []
    for key, required, optional in (
        ("task", {"type": str}, {"name": str}),
        ("dataset", {"type": str, "name": str},
         {"config": str, "split": str, "revision": str, "args": (dict, str)}),
    ):
        part = result.get(key)
        if not isinstance(part, dict):
            problems.append((f"{where}.{key}", f"expected a mapping, found {_describe(part)}"))
        else:
            problems += _check_keys(part, f"{where}.{key}", required, optional)
    metrics = result.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        problems.append((f"{where}.metrics", f"expected a non-empty list, found {_describe(metrics)}"))
        metrics = []
    for number, metric in enumerate(metrics):
        at = f"{where}.metrics[{number}]"
        if not isinstance(metric, dict):
            problems.append((at, f"expected a mapping, found {_describe(metric)}"))
            continue
        problems += _check_keys(metric, at, {"type": str}, {"name": str, "config": str,
                                                             "verified": bool, "args": (dict, str)})
        if metric.get("value") is None:
            problems.append((f"{at}.value", "missing; every metric needs a value"))
    source = result.get("source")
    if source is not None:
        if not isinstance(source, dict):
            problems.append((f"{where}.source", f"expected a mapping, found {_describe(source)}"))
        else:
            problems += _check_keys(source, f"{where}.source", {"url": str}, {"name": str})
    return problems


def _check_keys(mapping: dict[str, Any], where: str, required: dict[str, Any],
                optional: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for key, kind in {**required, **optional}.items():
        value = mapping.get(key)
        if value is None:
            if key in required:
                problems.append((f"{where}.{key}", "missing; the Hub requires it"))
        elif not isinstance(value, kind) or (kind is str and isinstance(value, bool)):
            expected = _EXPECTED.get(kind, "a mapping")
            problems.append((f"{where}.{key}", f"expected {expected}, found {_describe(value)}"))
    return problems


def _base_model_problems(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not _is_string_or_strings(value):
        return [("base_model", f"expected a Hub model id or a list of them, found {_describe(value)}")]
    problems = []
    for name in [value] if isinstance(value, str) else value:
        problem = hub_id_problem(name)
        if problem is not None:
            problems.append(("base_model", f"{name!r} {problem}; the Hub accepts only model ids "
                             "such as meta-llama/Llama-3.2-1B, so remove it or set the base "
                             "model's Hub id"))
    return problems


def _license_problems(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, str):
        return [("license", f"expected a license id, found {_describe(value)}")]
    if value in HUB_LICENSES:
        return []
    close = difflib.get_close_matches(value.lower(), sorted(HUB_LICENSES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return [("license", f"{value!r} is not a Hub license id{hint}; use an id from "
             f"{LICENSES_URL}, or license: other with license_name and license_link")]


def _round_trip_problems(text: str, metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """Compare the written metadata with what huggingface_hub's ModelCard reads back."""
    try:
        card = ModelCard(text)
    except ValueError as exc:
        field = "model-index" if "model_index" in str(exc) or "eval_results" in str(exc) else "metadata"
        return [(field, f"huggingface_hub cannot read it ({exc})")]
    parsed = card.data.to_dict()
    problems = []
    for key in sorted(set(metadata) | set(parsed)):
        if metadata.get(key) != parsed.get(key):
            problems.append((key, f"written as {metadata.get(key)!r} but huggingface_hub reads "
                             f"it back as {parsed.get(key)!r}"))
    return problems


def _load_yaml(block: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        raise CardError(f"the model card's YAML block is invalid{where}: "
                        f"{getattr(exc, 'problem', None) or exc}; fix the YAML", ("metadata",)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardError(f"the model card's YAML block must be a mapping, found {_describe(data)}",
                        ("metadata",))
    return data


def _is_string_or_strings(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"
