"""The command line end to end on the real corpus: add, ls, show, export, compose, rm, gc, verify."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adapterhub import formats
from adapterhub.cli import main
from tests.adapterhub.builders import synthetic_adapter
from tests.conftest import CORPUS_LORA


def run(home: Path, *args: str):
    result = CliRunner().invoke(main, ["--home", str(home), *map(str, args)])
    assert "Traceback" not in result.output
    return result


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file under the store with its bytes.

    SQLite's shared-memory file (``-shm``) is left out: it is rewritten whenever a connection
    opens the database and contains no data of the store.
    """
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")}


def blob_count(home: Path) -> int:
    return sum(1 for p in (home / "blobs").rglob("*") if p.is_file())


def test_every_corpus_adapter_adds_once(corpus, store_home):
    for name in CORPUS_LORA:
        result = run(store_home, "add", corpus / name, "--name", name)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("added ")
    blobs = blob_count(store_home)

    for name in CORPUS_LORA:
        again = run(store_home, "add", corpus / name)
        assert again.exit_code == 0
        assert again.output.startswith("already stored ")
    listing = json.loads(run(store_home, "ls", "--json").output)

    assert blob_count(store_home) == blobs
    assert len(listing) == len(CORPUS_LORA)
    assert sorted(ref for row in listing for ref in row["refs"]) == sorted(f"{n}:latest" for n in CORPUS_LORA)


def test_foreign_adapter_leaves_store_unchanged(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    before = snapshot(store_home)
    folder = corpus / "negative-lerobot-foreign-adapter"

    result = run(store_home, "add", folder, "--name", "robot")

    assert result.exit_code == 1
    assert result.output == (
        f"Error: {folder}: adapter_config.json has no 'peft_type' (keys: base_model), so it is "
        "not a PEFT adapter; save the adapter with PEFT's save_pretrained\n"
    )
    assert snapshot(store_home) == before


@pytest.mark.parametrize("name", ["gpt2-lora-tigrinya-causal", "opencalm-1b-lora-r1-fp16",
                                  "bert-tiny-adalora-emot"])
def test_export_then_add_keeps_id(corpus, store_home, tmp_path, name):
    added = run(store_home, "add", corpus / name, "--name", "original")
    artifact_id = json.loads(run(store_home, "show", "original", "--json").output)["id"]

    exported = run(store_home, "export", "original", "-o", tmp_path / "out")
    again = run(store_home, "add", tmp_path / "out", "--name", "copy")

    assert added.exit_code == exported.exit_code == again.exit_code == 0
    assert again.output == f"already stored {artifact_id[:12]} as copy:latest\n"


def test_export_lora_round_trips(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")

    result = run(store_home, "export", "demo", "-o", tmp_path / "demo.lora", "--format", "lora")
    exported = formats.load(tmp_path / "demo.lora")
    original = formats.load(corpus / "gpt2-lora-demo-causal")

    assert result.exit_code == 0
    assert exported.config == original.config
    assert all(torch.equal(exported.tensors[k], original.tensors[k]) for k in original.tensors)


def test_export_refuses_to_overwrite(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_config.json").write_text("{}")

    result = run(store_home, "export", "demo", "-o", tmp_path / "out")

    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'out' / 'adapter_config.json'} already exists; choose an empty "
        "destination or pass --force\n"
    )
    assert (tmp_path / "out" / "adapter_config.json").read_text() == "{}"
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_compose_files_without_store(corpus, tmp_path):
    home = tmp_path / "never-created"
    first, second = corpus / "gpt2-lora-tigrinya-causal", corpus / "gpt2-lora-demo-causal"
    (tmp_path / "task.lora").write_bytes(formats.get("lora").to_files(formats.load(first))["adapter.lora"])
    (tmp_path / "style.lora").write_bytes(formats.get("lora").to_files(formats.load(second))["adapter.lora"])

    result = run(home, "compose", tmp_path / "task.lora", tmp_path / "style.lora",
                 "--weights", "1.0,0.5", "-o", tmp_path / "merged")
    merged = formats.load(tmp_path / "merged")

    assert result.exit_code == 0, result.output
    assert not home.exists()
    assert merged.lineage["parents"][1]["weight"] == 0.5
    assert merged.modules["transformer.h.0.attn.c_attn"].rank == 16


def test_compose_stores_lineage_and_energy(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-tigrinya-causal", "--name", "task")
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "style")

    result = run(store_home, "compose", "task", "style", "--weights", "1.0,0.5", "--method", "svd",
                 "--rank", "8", "--name", "task+style")
    shown = run(store_home, "show", "task+style")
    details = json.loads(run(store_home, "show", "task+style", "--json").output)
    task_id = json.loads(run(store_home, "show", "task", "--json").output)["id"]

    assert result.exit_code == 0, result.output
    assert "stored " in result.output
    assert "retained energy per module (lowest " in shown.output
    assert re.search(r"\n  transformer\.h\.0\.attn\.c_attn +rank    8  0\.99\d+  relative error [0-9.e-]+\n",
                     shown.output)
    assert details["parents"][0] == task_id
    assert details["metadata"]["lineage"]["parameters"] == {"method": "svd", "rank": 8,
                                                            "weights": [1.0, 0.5]}


def test_compose_paths_join_store_lineage(corpus, store_home):
    result = run(store_home, "compose", corpus / "gpt2-lora-tigrinya-causal",
                 corpus / "gpt2-lora-demo-causal", "--name", "both")
    details = json.loads(run(store_home, "show", "both", "--json").output)

    assert result.exit_code == 0, result.output
    assert len(details["parents"]) == 2
    for parent in details["parents"]:
        assert run(store_home, "show", f"sha256:{parent[:8]}").exit_code == 0


def test_compose_help_lists_methods():
    result = CliRunner().invoke(main, ["compose", "--help"])

    lines = result.output.split("Methods", 1)[1].splitlines()
    assert result.exit_code == 0
    for name in ("cat", "svd", "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
        described = [line for line in lines if re.fullmatch(rf" +{name} +\S.*", line)]
        assert len(described) == 1, name
    assert re.search(r"\n +cat +exact weighted sum; the result's rank is the sum of the input ranks\n",
                     result.output)
    assert re.search(r"\n +svd +best rank-r approximation of the exact sum", result.output)
    assert re.search(r"\n +linear +PEFT's factor averaging .*NOT the weighted sum", result.output)


def test_unknown_method_lists_valid_ones(corpus, store_home):
    result = run(store_home, "compose", corpus / "gpt2-lora-demo-causal", "--method", "sdv", "-o",
                 store_home / "out")

    assert result.exit_code == 2
    assert result.output == (
        "Error: unknown method 'sdv' (did you mean 'svd'?); choose one of: cat, svd, linear, ties, "
        "dare_linear, dare_ties, magnitude_prune\n"
    )


@pytest.mark.parametrize("args, message", [
    (["--weights", "1,x"], "weight 'x' in '1,x' is not a number; write e.g. 1.0,0.5"),
    (["--method", "svd", "--rank", "0"], "rank 0 is invalid; expected a positive integer"),
    (["--device", "cuda:7"], "device 'cuda:7' requested but CUDA is not available; use --device cpu"),
])
def test_bad_option_values_exit_2(corpus, store_home, args, message):
    result = run(store_home, "compose", corpus / "gpt2-lora-demo-causal", *args)

    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert result.exit_code == 2
    assert result.output == f"Error: {message}\n"


def test_bad_compose_input_writes_nothing(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    broken = synthetic_adapter(tmp_path / "broken", {"q_proj": (8, 8, 4)})
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    before = snapshot(store_home)

    result = run(store_home, "compose", "demo", broken, "--name", "never", "-o", tmp_path / "out")

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {weights}: not a valid safetensors file (")
    assert snapshot(store_home) == before
    assert not (tmp_path / "out").exists()


def test_base_mismatch_exit_1_and_override(corpus, store_home, tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (8, 8, 4)}, base_model_name_or_path="org/one")
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (8, 8, 4)}, base_model_name_or_path="org/two")

    refused = run(store_home, "compose", first, second, "-o", tmp_path / "out")
    allowed = run(store_home, "compose", first, second, "-o", tmp_path / "out", "--allow-base-mismatch")

    assert refused.exit_code == 1
    assert refused.output.startswith("Error: the adapters were trained on different base models: ")
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_unknown_reference_suggests(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")

    result = run(store_home, "show", "dmeo")

    assert result.exit_code == 1
    assert result.output == (
        f"Error: Reference 'dmeo:latest' not found in the store '{store_home}'. "
        "Close matches: demo:latest.\n"
    )


def test_rm_keeps_bytes_until_gc(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    blobs = blob_count(store_home)

    removed = run(store_home, "rm", "demo")
    after_rm = blob_count(store_home)
    collected = CliRunner().invoke(main, ["--home", str(store_home), "gc"])

    assert removed.output == "removed demo:latest\n"
    assert after_rm == blobs
    # Fresh blobs are protected by the grace period, so a just-added adapter survives gc.
    assert collected.exit_code == 0
    assert blob_count(store_home) == blobs


def test_verify_reports_corrupt_blob(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    config = json.loads(run(store_home, "show", "demo", "--json").output)["files"][0]
    blob = store_home / "blobs" / "sha256" / config["sha256"][:2] / config["sha256"][2:]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"gpt2", b"gpt3"))

    result = run(store_home, "verify")

    assert result.exit_code == 1
    assert config["sha256"] in result.output
    assert f"corrupt blob sha256:{config['sha256']}: its bytes no longer match its name\n" in result.output
    assert "checked 3 blobs: 1 problems\n" in result.output


def test_store_commands_do_not_import_torch(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    script = (
        "import sys\n"
        "from adapterhub.cli import main\n"
        "for args in (['ls'], ['show', 'demo'], ['verify'], ['gc', '--dry-run'], ['rm', 'demo']):\n"
        f"    main(['--home', {str(store_home)!r}, *args], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


def test_every_command_has_help_and_docs():
    reference = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()

    for name, command in main.commands.items():
        assert command.help, name
        assert f"## adapterhub {name}" in reference, name


def _blob_of(home: Path, reference: str, path: str) -> Path:
    files = json.loads(run(home, "show", reference, "--json").output)["files"]
    digest = next(f["sha256"] for f in files if f["path"] == path)
    return home / "blobs" / "sha256" / digest[:2] / digest[2:]


def test_export_rejects_corrupt_blob(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    blob = _blob_of(store_home, "demo", "adapter_model.safetensors")
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b"tail")

    result = run(store_home, "export", "demo", "-o", tmp_path / "out")

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Blob '{blob}' is corrupt: its bytes hash to ")
    assert result.output.endswith("Run verify to find every corrupt blob, then add the affected "
                                  "files again.\n")
    assert not (tmp_path / "out").exists()


def test_export_reports_missing_blob(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    blob = _blob_of(store_home, "demo", "adapter_config.json")
    blob.unlink()

    result = run(store_home, "export", "demo", "-o", tmp_path / "out")

    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "unexpected" not in result.output
    assert blob.name in result.output


def test_exported_files_follow_umask(corpus, store_home, tmp_path):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")

    run(store_home, "export", "demo", "-o", tmp_path / "out")

    for path in (tmp_path / "out").iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask(), path


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("given", ["./missing-adapter", "missing.lora", "{tmp}/examples/tsk"])
def test_missing_path_is_named_as_path(corpus, store_home, tmp_path, given):
    (tmp_path / "examples").mkdir()
    reference = given.format(tmp=tmp_path)

    result = run(store_home, "compose", reference, corpus / "gpt2-lora-demo-causal", "-o", tmp_path / "out")

    assert result.exit_code == 1
    assert result.output == (
        f"Error: {reference}: no such file or folder, and no stored adapter has that name; check "
        "the path, or run adapterhub ls to see the stored names\n"
    )


def test_bare_id_prefix_resolves(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")
    artifact_id = json.loads(run(store_home, "show", "demo", "--json").output)["id"]

    result = run(store_home, "show", artifact_id[:12], "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["id"] == artifact_id


def test_moving_a_name_is_reported(corpus, store_home):
    first = run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "model")
    old_id = json.loads(run(store_home, "show", "model", "--json").output)["id"]

    moved = CliRunner().invoke(main, ["--home", str(store_home), "add",
                                      str(corpus / "gpt2-lora-tigrinya-causal"), "--name", "model"])

    assert first.exit_code == moved.exit_code == 0
    assert moved.stderr == (
        f"note: model:latest pointed at {old_id[:12]} before; that adapter stays stored until gc, "
        f"unless another name points at it (adapterhub tag sha256:{old_id[:12]} NAME)\n"
    )


def test_unnamed_compose_is_reported(corpus, store_home):
    result = CliRunner().invoke(main, ["--home", str(store_home), "compose",
                                       str(corpus / "gpt2-lora-demo-causal")])

    artifact_id = result.stdout.split()[1]
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        "note: the adapter has no name, so gc deletes it after an hour; name it with: "
        f"adapterhub tag sha256:{artifact_id} NAME\n"
    )


def test_exact_recipe_shows_one_line(corpus, store_home):
    run(store_home, "compose", corpus / "gpt2-lora-tigrinya-causal", corpus / "gpt2-lora-demo-causal",
        "--name", "both")

    shown = run(store_home, "show", "both").output

    assert "modules:     36, all exact (retained energy 1.0, no error)\n" in shown
    assert "retained energy per module" not in shown


def test_ls_without_match_names_filters(corpus, store_home):
    run(store_home, "add", corpus / "gpt2-lora-demo-causal", "--name", "demo")

    result = run(store_home, "ls", "--base-model", "org/none")

    assert result.exit_code == 0
    assert result.output == (
        "no adapters match --base-model org/none; run adapterhub ls without filters to see them all\n"
    )


def test_show_lists_layers_in_numeric_order(corpus, store_home):
    run(store_home, "compose", corpus / "gpt2-lora-tigrinya-causal", corpus / "gpt2-lora-demo-causal",
        "--method", "svd", "--rank", "4", "--name", "both")

    shown = run(store_home, "show", "both").output
    names = re.findall(r"\n  (transformer\.h\.\d+)\.attn\.c_attn ", shown)

    assert names == [f"transformer.h.{layer}" for layer in range(12)]


def test_listing_creates_no_store(tmp_path):
    home = tmp_path / "nothing-here"

    listed = run(home, "ls")
    shown = run(home, "show", "task")

    assert listed.exit_code == 0
    assert listed.output == "no adapters stored; add one with: adapterhub add PATH --name NAME\n"
    assert shown.exit_code == 1
    assert shown.output.startswith(f"Error: No store at '{home}'")
    assert not home.exists()
