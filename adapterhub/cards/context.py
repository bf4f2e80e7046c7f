"""The facts a card states, gathered from the store into the variables of a card template.

Everything here comes from the artifact's manifest, its stored ``adapter_config.json`` (or the
config embedded in a ``.lora`` file), the manifests of its parents and the store's remote
records. Nothing is estimated, and reading the store this way needs neither torch nor the
adapter's tensors.
"""

from __future__ import annotations

import json
import re
import shlex
from statistics import fmean
from typing import TYPE_CHECKING, Any

from adapterhub.cards.basemodel import BaseModel
from adapterhub.render import ID_WIDTH, human_bytes

if TYPE_CHECKING:
    from adapterhub.library import Library

CONFIG_NAME = "adapter_config.json"
LORA_FILE_NAME = "adapter.lora"
README_NAME = "README.md"

# transformers auto classes for PEFT task types; other task types load with AutoModel.
MODEL_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}

# Spellings that papers and PEFT's documentation use for the PEFT types named in the card's prose.
PEFT_METHOD_NAMES = {"LORA": "LoRA", "ADALORA": "AdaLoRA", "LOHA": "LoHa", "LOKR": "LoKr",
                     "IA3": "IA³", "VERA": "VeRA"}

# The folder the loading snippet reads when the card does not know the adapter's Hub repo.
EXPORT_FOLDER = "adapter"


def stored_config(library: Library, files: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the PEFT config stored with an adapter, or None for artifacts without one."""
    by_path = {entry["path"]: entry["sha256"] for entry in files}
    if CONFIG_NAME in by_path:
        return json.loads(library.store.blobs.read_bytes(by_path[CONFIG_NAME]))
    if LORA_FILE_NAME in by_path:
        from safetensors import safe_open

        path = library.store.blobs.path(by_path[LORA_FILE_NAME])
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get("adapter_config")
        return json.loads(text) if text else None
    return None


def hub_repos(library: Library) -> dict[str, str]:
    """Return the Hub repo of each artifact that this store pulled from or pushed to the Hub.

    The store's remote records give the locations. An artifact seen at several locations
    gets the first in the records' order (repo, revision, subfolder), so cards stay
    deterministic.
    """
    from adapterhub.hub.remotes import RemoteRecords

    repos: dict[str, str] = {}
    for record in RemoteRecords(library.store.home, library.store.blobs.tmp_dir).all():
        repos.setdefault(record.artifact_id, record.repo_id)
    return repos


def configuration(metadata: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """Return the adapter's configuration as the card states it."""
    config = config or {}
    rank = metadata.get("rank")
    alpha = metadata.get("alpha")
    use_rslora = bool(metadata.get("use_rslora"))
    scaling = None
    # AdaLoRA divides by the rank each module kept, which differs between modules.
    if rank and alpha and metadata.get("peft_type") == "LORA":
        scaling = {"formula": "α / √r" if use_rslora else "α / r",
                   "value": alpha / rank ** 0.5 if use_rslora else alpha / rank}
    peft_type = metadata.get("peft_type")
    return {
        "peft_type": peft_type,
        "method_name": PEFT_METHOD_NAMES.get(peft_type, peft_type),
        "task_type": metadata.get("task_type"),
        "rank": rank,
        "alpha": alpha,
        "scaling": scaling,
        "use_rslora": use_rslora,
        "use_dora": bool(metadata.get("use_dora")),
        "target_modules": config.get("target_modules", metadata.get("target_modules")),
        "adapted_targets": metadata.get("target_modules") or [],
        "module_count": metadata.get("module_count"),
        "module_ranks": metadata.get("module_ranks") or [],
        "rank_pattern": dict(sorted((config.get("rank_pattern") or {}).items())),
        "alpha_pattern": dict(sorted((config.get("alpha_pattern") or {}).items())),
        "modules_to_save": metadata.get("modules_to_save") or [],
        "layers_to_transform": config.get("layers_to_transform"),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "dtype": metadata.get("dtype"),
        "parameters": metadata.get("parameters"),
    }


def file_rows(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the artifact's files for the card's table, sorted by path.

    The stored README.md is left out: it is the card being replaced, and a card cannot state
    its own sha256.
    """
    return [
        {"path": entry["path"], "size": entry["size"], "size_text": human_bytes(entry["size"]),
         "sha256": entry["sha256"]}
        for entry in sorted(files, key=lambda entry: entry["path"])
        if entry["path"] != README_NAME
    ]


def related(library: Library, repos: dict[str, str], artifact_id: str, label: str | None,
            weight: Any) -> dict[str, Any]:
    """Describe a parent or stack component: its id, label, weight and what the store records."""
    row: dict[str, Any] = {"id": artifact_id, "short_id": artifact_id[:ID_WIDTH], "label": label,
                           "weight": weight, "hub_repo": repos.get(artifact_id), "peft_type": None,
                           "rank": None, "base_model": None, "task_type": None}
    if library.store.has_artifact(artifact_id):
        metadata = library.store.manifest(artifact_id).metadata
        row.update(peft_type=metadata.get("peft_type"),
                   rank=metadata.get("rank"), base_model=metadata.get("base_model"),
                   task_type=metadata.get("task_type"))
    return row


def recipe(library: Library, repos: dict[str, str], lineage: dict[str, Any],
           name: str | None) -> dict[str, Any]:
    """Return the composition recipe of a composed adapter, with the command that repeats it."""
    from adapterhub.compose.methods import METHODS

    method = lineage.get("method")
    parameters = lineage.get("parameters") or {}
    parents = [related(library, repos, parent["id"], parent.get("label"), parent.get("weight"))
               for parent in lineage.get("parents", [])]
    modules = [{"name": module, "rank": report.get("rank"),
                "retained_energy": report.get("retained_energy")}
               for module, report in sorted((lineage.get("modules") or {}).items(),
                                            key=lambda item: natural_key(item[0]))]
    registered = METHODS.get(method)
    return {
        "method": method,
        "method_summary": registered.summary if registered else None,
        "method_reference": registered.reference if registered else None,
        "parameters": {key: parameter_text(value) for key, value in sorted(parameters.items())
                       if key not in ("method", "weights")},
        "parents": parents,
        "seed": parameters.get("seed"),
        "target_rank": parameters.get("rank"),
        "target_energy": parameters.get("energy"),
        "modules": modules,
        "energy": energy_summary(modules),
        "command": compose_command(lineage, name),
    }


def natural_key(name: str) -> tuple:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name))


def energy_summary(modules: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Summarise retained energy over modules: lowest (and where), mean, and the rank range."""
    energies = [m["retained_energy"] for m in modules if m["retained_energy"] is not None]
    if not energies:
        return None
    lowest = min(energies)
    ranks = [m["rank"] for m in modules if m["rank"] is not None]
    return {
        "module_count": len(modules),
        "lowest": lowest,
        "lowest_modules": [m["name"] for m in modules if m["retained_energy"] == lowest],
        "mean": fmean(energies),
        "exact": all(energy == 1.0 for energy in energies),
        "min_rank": min(ranks) if ranks else None,
        "max_rank": max(ranks) if ranks else None,
    }


def compose_command(lineage: dict[str, Any], name: str | None) -> str:
    """Return the ``adapterhub compose`` command that recomputes this adapter from its parents.

    Parents are named by full id, so the command works in any store that contains them. A
    ``keep_head`` given as a parent's label becomes that parent's position, which stays valid
    when the parents are named by id.
    """
    parents = lineage.get("parents", [])
    labels = [parent.get("label") for parent in parents]
    words = ["adapterhub", "compose", *(f"sha256:{parent['id']}" for parent in parents)]
    options = [f"--weights={','.join(repr(float(parent['weight'])) for parent in parents)}",
               "--method", str(lineage.get("method"))]
    for key, value in sorted((lineage.get("parameters") or {}).items()):
        if key in ("method", "weights") or value is None or value is False:
            continue
        if key == "module_weights":
            for rule in value:
                adapter = _position(rule["adapter"], labels)
                options += ["--module-weight", f"{adapter}:{rule['pattern']}={rule['weight']!r}"]
            continue
        options.append(f"--{key.replace('_', '-')}")
        if value is not True:
            options.append(str(_position(value, labels) if key == "keep_head" else value))
    if name:
        options += ["--name", name]
    lines = [" ".join(shlex.quote(word) for word in words[:2])]
    lines += ["  " + shlex.quote(word) for word in words[2:]]
    lines.append("  " + " ".join(shlex.quote(option) for option in options))
    return " \\\n".join(lines)


def parameter_text(value: Any) -> str:
    """Format a recorded compose parameter for the card's prose."""
    if isinstance(value, list) and all(isinstance(rule, dict) and "pattern" in rule for rule in value):
        return "; ".join(f"{rule['adapter']} on {rule['pattern']} = {rule['weight']!r}" for rule in value)
    return str(value)


def _position(adapter: Any, labels: list[Any]) -> Any:
    """Return the 1-based position of the input the user named ``adapter``, else ``adapter``."""
    return labels.index(adapter) + 1 if adapter in labels else adapter


def stack(library: Library, repos: dict[str, str], metadata: dict[str, Any]) -> dict[str, Any]:
    """Return the components of a stack artifact with their weights.

    Each component's ``name`` is its PEFT adapter name and ``path`` the folder export writes
    it to (see :mod:`adapterhub.compose.stack`).
    """
    components = []
    for component in metadata.get("components", []):
        name = component.get("name") or component.get("label")
        row = related(library, repos, component["id"], name, component.get("weight"))
        components.append({**row, "name": name, "subfolder": component.get("path") or name})
    return {"components": components}


def loading(details: dict[str, Any], base: BaseModel, repo_id: str | None,
            task_type: str | None, name: str | None) -> dict[str, Any]:
    """Return what the PEFT loading snippet needs: the model class, base model and location.

    Without a Hub repo the snippet reads the folder that its ``adapterhub export`` writes.
    """
    reference = name or f"sha256:{details['id'][:ID_WIDTH]}"
    export_command = None
    if repo_id is None:
        export_command = f"adapterhub export {shlex.quote(reference)} -o {EXPORT_FOLDER}"
    return {
        "model_class": MODEL_CLASSES.get(task_type, "AutoModel"),
        "base_model": base.hub_id or base.recorded,
        "adapter": repo_id or f"./{EXPORT_FOLDER}",
        "export_command": export_command,
    }
