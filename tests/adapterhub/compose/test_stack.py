"""Stacks end to end through the CLI: store, show, export, compose and materialize."""

from __future__ import annotations

import json

import torch

from adapterhub import formats
from tests.adapterhub.builders import synthetic_adapter
from tests.adapterhub.test_cli import run, snapshot

TASK, STYLE = "gpt2-lora-tigrinya-causal", "gpt2-lora-demo-causal"


def _add_pair(corpus, home):
    run(home, "add", corpus / TASK, "--name", "task")
    run(home, "add", corpus / STYLE, "--name", "style")
    ids = [json.loads(run(home, "show", name, "--json").output)["id"] for name in ("task", "style")]
    return ids


def _relative_error(actual, expected):
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


def test_stack_stores_components(corpus, store_home):
    task_id, style_id = _add_pair(corpus, store_home)

    result = run(store_home, "stack", "task", "style", "--weights", "1,0.5", "--name", "both")
    details = json.loads(run(store_home, "show", "both", "--json").output)
    shown = run(store_home, "show", "both")

    assert result.exit_code == 0, result.output
    assert result.output == (
        f"stored stack {details['id'][:12]} as both:latest\n"
        f"  +1 × task  sha256:{task_id[:12]}\n"
        f"  +0.5 × style  sha256:{style_id[:12]}\n"
    )
    assert details["kind"] == "stack"
    assert details["parents"] == [task_id, style_id]
    assert [f["path"] for f in details["files"]] == ["stack.json"]
    assert details["metadata"]["components"] == [
        {"id": task_id, "name": "task", "path": "task", "weight": 1.0},
        {"id": style_id, "name": "style", "path": "style", "weight": 0.5},
    ]
    assert shown.output.endswith(
        f"components:\n  +1 × task  sha256:{task_id[:12]}\n  +0.5 × style  sha256:{style_id[:12]}\n"
    )


def test_stack_adds_paths(corpus, store_home):
    result = run(store_home, "stack", corpus / TASK, corpus / STYLE, "--name", "both")
    listing = json.loads(run(store_home, "ls", "--json").output)
    details = json.loads(run(store_home, "show", "both", "--json").output)

    assert result.exit_code == 0, result.output
    assert sorted(row["kind"] for row in listing) == ["adapter", "adapter", "stack"]
    assert [c["name"] for c in details["metadata"]["components"]] == [TASK, STYLE]
    for parent in details["parents"]:
        assert run(store_home, "show", f"sha256:{parent[:12]}").exit_code == 0


def test_stack_export_layout(corpus, store_home, tmp_path):
    task_id, style_id = _add_pair(corpus, store_home)
    run(store_home, "stack", "task", "style", "--weights", "1,-0.5", "--name", "both")

    result = run(store_home, "export", "both", "-o", tmp_path / "out")
    document = json.loads((tmp_path / "out" / "stack.json").read_text())
    written = sorted(str(path.relative_to(tmp_path / "out")) for path in (tmp_path / "out").rglob("*")
                     if path.is_file())

    assert result.exit_code == 0, result.output
    assert written == ["stack.json", "style/adapter_config.json", "style/adapter_model.safetensors",
                       "task/adapter_config.json", "task/adapter_model.safetensors"]
    assert document == {
        "adapterhub_stack": 1,
        "base_model": "gpt2",
        "adapters": [
            {"id": task_id, "name": "task", "path": "task", "weight": 1.0},
            {"id": style_id, "name": "style", "path": "style", "weight": -0.5},
        ],
    }
    for name, source in (("task", TASK), ("style", STYLE)):
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            assert (tmp_path / "out" / name / file).read_bytes() == (corpus / source / file).read_bytes()


def test_compose_stack_equals_materialized_cat(corpus, store_home, tmp_path):
    _add_pair(corpus, store_home)
    run(store_home, "stack", "task", "style", "--weights", "1,0.5", "--name", "both")

    composed = run(store_home, "compose", "both", "-o", tmp_path / "composed")
    materialized = run(store_home, "stack", "task", "style", "--weights", "1,0.5", "--materialize",
                       "--name", "flat")
    run(store_home, "export", "flat", "-o", tmp_path / "flat")
    first, second = formats.load(tmp_path / "composed"), formats.load(tmp_path / "flat")
    task, style = formats.load(corpus / TASK), formats.load(corpus / STYLE)

    assert composed.exit_code == 0, composed.output
    assert materialized.output.startswith("stored adapter ")
    assert first.lineage["method"] == second.lineage["method"] == "cat"
    assert [p["weight"] for p in first.lineage["parents"]] == [1.0, 0.5]
    assert [p["label"] for p in first.lineage["parents"]] == ["both/task", "both/style"]
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[key], second.tensors[key]) for key in first.tensors)
    for name, module in first.modules.items():
        expected = task.modules[name].delta()
        if name in style.modules:
            expected = expected + 0.5 * style.modules[name].delta()
        assert _relative_error(module.delta(), expected) <= 1e-6, name


def test_stack_of_stack_flattens(corpus, store_home):
    task_id, style_id = _add_pair(corpus, store_home)
    run(store_home, "stack", "task", "style", "--weights", "1,0.5", "--name", "both")

    result = run(store_home, "stack", "both", "task", "--weights", "2,1", "--name", "nested")
    components = json.loads(run(store_home, "show", "nested", "--json").output)["metadata"]["components"]

    assert result.exit_code == 0, result.output
    assert [(c["id"], c["name"], c["weight"]) for c in components] == [
        (task_id, "task", 2.0), (style_id, "style", 1.0), (task_id, "task_2", 1.0)
    ]


def test_stack_rejects_dora_and_writes_nothing(corpus, store_home, tmp_path):
    _add_pair(corpus, store_home)
    dora = synthetic_adapter(tmp_path / "dora", {"q_proj": (8, 8, 4)}, use_dora=True)
    before = snapshot(store_home)

    result = run(store_home, "stack", "task", dora, "--name", "bad")

    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot compose: {dora} uses DoRA: its magnitude vector rescales the whole "
        "weight, so the update is not B·A and cannot be summed. Only plain LoRA, AdaLoRA, LoHa "
        "and LoKr compose.\n"
    )
    assert snapshot(store_home) == before


def test_stack_exports_peft_only(corpus, store_home, tmp_path):
    _add_pair(corpus, store_home)
    run(store_home, "stack", "task", "style", "--name", "both")

    result = run(store_home, "export", "both", "-o", tmp_path / "x.lora", "--format", "lora")

    assert result.exit_code == 1
    assert result.output == (
        "Error: both is a stack, which exports as PEFT folders only; drop --format lora, or "
        "materialize it first (adapterhub compose both --name NAME)\n"
    )
    assert not (tmp_path / "x.lora").exists()


def test_stack_is_not_one_adapter(corpus, store_home):
    _add_pair(corpus, store_home)
    run(store_home, "stack", "task", "style", "--name", "both")

    result = run(store_home, "inspect", "both", "task")

    assert result.exit_code == 1
    assert result.output == (
        "Error: both is a stack of 2 adapters, not one adapter; compose it into one "
        "(adapterhub compose both) or export its components\n"
    )


def test_stack_weights_checked(corpus, store_home):
    _add_pair(corpus, store_home)

    result = run(store_home, "stack", "task", "style", "--weights", "1")

    assert result.exit_code == 2
    assert result.output == (
        "Error: 1 weight given for 2 adapters; pass one weight per adapter, e.g. --weights 1.0,1.0\n"
    )


def test_stack_keep_head_resolves_conflict(corpus, store_home):
    from tests.adapterhub.test_cli import run

    refused = run(store_home, "stack", corpus / "distilbert-lora-emotion", corpus / "distilbert-lora-imdb",
                  "--name", "heads")
    kept = run(store_home, "stack", corpus / "distilbert-lora-emotion", corpus / "distilbert-lora-imdb",
               "--name", "heads", "--keep-head", "2")

    assert refused.exit_code == 1
    assert refused.output.endswith(f"choose one with --keep-head {corpus / 'distilbert-lora-emotion'}\n")
    assert kept.exit_code == 0, kept.output
    assert kept.output.startswith("stored stack ")
