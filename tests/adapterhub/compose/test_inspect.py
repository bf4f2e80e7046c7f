"""adapterhub inspect: cosine similarity and column-space overlap against dense references."""

from __future__ import annotations

import json

import pytest
import torch

from adapterhub import formats
from adapterhub.library import Library
from tests.adapterhub.builders import LORA_DEFAULTS, synthetic_adapter, write_peft_folder
from tests.adapterhub.test_cli import run

TASK, STYLE = "gpt2-lora-tigrinya-causal", "gpt2-lora-demo-causal"


def _dense_cosine(first, second):
    return float((first * second).sum() / (first.norm() * second.norm()))


def _dense_overlap(first, second):
    """‖Q1ᵀQ2‖² / min(k1, k2) with Q from the dense SVD and k the numerical ranks."""
    bases = []
    for delta in (first, second):
        u, s, _ = torch.linalg.svd(delta, full_matrices=False)
        rank = int((s > max(delta.shape) * torch.finfo(delta.dtype).eps * s[0]).sum())
        bases.append(u[:, :rank])
    return float((bases[0].T @ bases[1]).square().sum()) / min(b.shape[1] for b in bases)


def test_inspect_matches_dense(corpus, tmp_path):
    library = Library.open(tmp_path / "store")
    task, style = formats.load(corpus / TASK), formats.load(corpus / STYLE)

    comparison = library.inspect(str(corpus / TASK), str(corpus / STYLE))
    rows = {row.module: row for row in comparison.modules}

    assert sorted(rows) == sorted(style.modules)
    assert len(comparison.only_first) == 24
    assert comparison.only_second == ()
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.11.attn.c_attn"):
        first, second = task.modules[name].delta(), style.modules[name].delta()
        assert rows[name].cosine == pytest.approx(_dense_cosine(first, second), abs=1e-9)
        assert rows[name].overlap == pytest.approx(_dense_overlap(first, second), abs=1e-9)


def test_inspect_same_adapter(corpus, tmp_path):
    comparison = Library.open(tmp_path / "store").inspect(str(corpus / STYLE), str(corpus / STYLE))

    assert {round(row.cosine, 9) for row in comparison.modules} == {1.0}
    assert {round(row.overlap, 9) for row in comparison.modules} == {1.0}


def test_overlap_uses_column_space_of_update(tmp_path):
    # A has a zero row, so the last column of B contributes nothing to ΔW. The second adapter
    # writes exactly along that column: the updates' column spaces are orthogonal, although
    # the column spaces of the two B factors overlap.
    b = torch.eye(6)[:, :3].contiguous()
    first = {"base_model.model.q_proj.lora_A.weight": torch.cat([torch.randn(2, 5), torch.zeros(1, 5)]),
             "base_model.model.q_proj.lora_B.weight": b}
    second = {"base_model.model.q_proj.lora_A.weight": torch.randn(1, 5),
              "base_model.model.q_proj.lora_B.weight": b[:, 2:3].contiguous()}
    config = {**LORA_DEFAULTS, "target_modules": ["q_proj"]}
    write_peft_folder(tmp_path / "a", {**config, "r": 3}, first)
    write_peft_folder(tmp_path / "b", {**config, "r": 1}, second)

    comparison = Library.open(tmp_path / "store").inspect(str(tmp_path / "a"), str(tmp_path / "b"))

    assert comparison.modules[0].overlap == pytest.approx(0.0, abs=1e-12)
    assert comparison.modules[0].cosine == pytest.approx(0.0, abs=1e-12)


def test_inspect_cli_table_and_json(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / TASK, "--name", "task")
    run(store_home, "add", corpus / STYLE, "--name", "style")

    table = run(store_home, "inspect", "task", "style")
    listing = json.loads(run(store_home, "inspect", "style", "task", "--json").output)
    lines = table.output.splitlines()

    assert table.exit_code == 0, table.output
    assert lines[0].split() == ["MODULE", "COSINE", "OVERLAP"]
    # Only the adapter that has modules of its own gets an "only in" line.
    assert len(lines) == 1 + 12 + 1
    assert lines[-1].startswith("only in task: 24 modules: transformer.h.0.attn.c_proj, ")
    assert listing["first"] == "style"
    assert listing["second"] == "task"
    assert len(listing["modules"]) == 12
    assert len(listing["only_second"]) == 24
    assert sorted(listing["modules"][0]) == ["cosine", "module", "overlap"]


def test_inspect_shape_mismatch(tmp_path, store_home):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (8, 8, 2)}, r=2)
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (8, 16, 2)}, r=2)

    result = run(store_home, "inspect", first, second)

    assert result.exit_code == 1
    assert result.output == (
        "Error: the same module has different weight shapes, so the adapters belong to different "
        f"models: module 'q_proj': {first} [8, 8], {second} [8, 16]\n"
    )
