"""The compose command's method options, module weights and progress counter."""

from __future__ import annotations

import json
import re

import torch

from adapterhub import formats
from adapterhub.cli.compose_commands import _progress
from tests.adapterhub.test_cli import run

TASK, STYLE = "gpt2-lora-tigrinya-causal", "gpt2-lora-demo-causal"


def test_module_weight_option(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / TASK, "--name", "task:v1")
    run(store_home, "add", corpus / STYLE, "--name", "style")

    result = run(store_home, "compose", "task:v1", "style", "--module-weight",
                 r"task:v1:transformer\.h\.(10|11)\..*=0", "-o", tmp_path / "out")
    composed = formats.load(tmp_path / "out")
    style = formats.load(corpus / STYLE)

    assert result.exit_code == 0, result.output
    assert composed.lineage["parameters"]["module_weights"] == [
        {"adapter": "task:v1", "pattern": r"transformer\.h\.(10|11)\..*", "weight": 0.0}
    ]
    name = "transformer.h.11.attn.c_attn"
    assert torch.allclose(composed.modules[name].delta(), style.modules[name].delta(), atol=1e-6)


def test_ties_reports_energy_and_error(corpus, store_home, tmp_path):
    result = run(store_home, "compose", corpus / TASK, corpus / STYLE, "--method", "ties", "--density",
                 "0.5", "--rank", "8", "--majority-sign", "frequency", "-o", tmp_path / "out")
    lineage = formats.load(tmp_path / "out").lineage

    assert result.exit_code == 0, result.output
    assert lineage["parameters"] == {"method": "ties", "rank": 8, "density": 0.5,
                                     "majority_sign": "frequency"}
    assert (f"lowest retained energy over modules: {lineage['min_retained_energy']:.6f}; "
            f"largest relative error: {lineage['max_relative_error']:.6g}\n") in result.output
    assert all("relative_error" in report for report in lineage["modules"].values())


def test_unused_method_option_exits_2(corpus, store_home):
    result = run(store_home, "compose", corpus / STYLE, "--density", "0.5", "-o", store_home / "out")

    assert result.exit_code == 2
    assert result.output == "Error: method 'cat' does not use --density; drop it\n"


def test_bad_module_weight_exits_2(corpus, store_home):
    result = run(store_home, "compose", corpus / STYLE, "--module-weight", "1:.*attn.*", "-o",
                 store_home / "out")

    assert result.exit_code == 2
    assert result.output == (
        "Error: module weight '1:.*attn.*' has no '=WEIGHT' at the end; write e.g. "
        "style:.*self_attn.*=0.3\n"
    )


def test_progress_advances_by_batches(capsys):
    progress = _progress(quiet=False)
    progress.enabled = True

    with progress as update:
        update(12, 36)
        update(36, 36)
        position = progress.bar.pos

    assert position == 36


def test_stored_recipe_lists_dare_seed(corpus, store_home):
    run(store_home, "compose", corpus / STYLE, "--method", "dare_linear", "--density", "0.9",
        "--rank", "8", "--name", "dare")
    details = json.loads(run(store_home, "show", "dare", "--json").output)

    assert details["metadata"]["lineage"]["parameters"]["seed"] == 0


def test_show_prints_module_errors(corpus, store_home):
    result = run(store_home, "compose", corpus / TASK, corpus / STYLE, "--method", "ties",
                 "--density", "0.5", "--rank", "8", "--name", "merged")
    shown = run(store_home, "show", "merged")
    details = json.loads(run(store_home, "show", "merged", "--json").output)
    report = details["metadata"]["lineage"]["modules"]["transformer.h.0.attn.c_attn"]

    assert result.exit_code == 0, result.output
    assert re.search(
        r"\n  transformer\.h\.0\.attn\.c_attn +rank    8  "
        + re.escape(f"{report['retained_energy']:.6f}  relative error {report['relative_error']:.3g}")
        + r"\n",
        shown.output,
    )
