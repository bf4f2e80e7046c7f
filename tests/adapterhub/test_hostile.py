"""Hostile adapters: each is rejected with a message that names the problem, and the store
stays byte for byte as it was."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adapterhub.cli import main
from store import Store
from tests.adapterhub.builders import (
    LORA_DEFAULTS,
    lora_tensors,
    synthetic_adapter,
    write_peft_folder,
)

MODULES = {"model.q_proj": (4, 4, 2)}
A_KEY = "base_model.model.model.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.q_proj.lora_B.weight"
CONFIG = {**LORA_DEFAULTS, "r": 2}


def run(home: Path, *args: object):
    result = CliRunner().invoke(main, ["--home", str(home), *map(str, args)])
    assert "Traceback" not in result.output
    return result


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file under the store with its bytes, except SQLite's shared-memory file."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A store that already contains one adapter, so that a rejected add has something to spoil."""
    home = tmp_path / "store"
    assert run(home, "add", synthetic_adapter(tmp_path / "good", MODULES, r=2), "--name", "good").exit_code == 0
    return home


def assert_rejected(home: Path, path: Path, message: str, *options: str) -> None:
    before = snapshot(home)

    result = run(home, "add", path, "--name", "hostile", *options)

    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert snapshot(home) == before


def safetensors_file(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    """Write a safetensors file by hand: 8-byte little-endian header length, header, data."""
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


def folder_with_weights(tmp_path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(CONFIG))
    safetensors_file(folder / "adapter_model.safetensors", header, data, length)
    return folder


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_header_longer_than_file(home: Path, tmp_path: Path) -> None:
    folder = folder_with_weights(tmp_path, {A_KEY: entry("F32", [2, 4], 0, 32)}, bytes(32), 10_000)
    weights = folder / "adapter_model.safetensors"
    size = weights.stat().st_size

    assert_rejected(home, folder, (
        f"{weights}: header length 10000 exceeds the file ({size} bytes) or the limit of "
        "100000000 bytes; the file is truncated or not safetensors"
    ))


def test_header_over_size_limit(home: Path, tmp_path: Path) -> None:
    folder = folder_with_weights(tmp_path, {}, b"", 200_000_000)
    weights = folder / "adapter_model.safetensors"
    # A sparse file: big enough to hold the claimed header, so only the limit is exceeded.
    os.truncate(weights, 300_000_000)

    assert_rejected(home, folder, (
        f"{weights}: header length 200000000 exceeds the file (300000000 bytes) or the limit "
        "of 100000000 bytes; the file is truncated or not safetensors"
    ))


def test_overlapping_offsets(home: Path, tmp_path: Path) -> None:
    header = {A_KEY: entry("F32", [2, 4], 0, 32), B_KEY: entry("F32", [4, 2], 16, 48)}
    folder = folder_with_weights(tmp_path, header, bytes(48))

    assert_rejected(home, folder, (
        f"{folder / 'adapter_model.safetensors'}: not a valid safetensors file (tensor "
        f"'{B_KEY}' (bytes 16-48) overlaps tensor '{A_KEY}'); the file is damaged or was not "
        "written by a safetensors writer; save it again"
    ))


def test_offsets_past_end(home: Path, tmp_path: Path) -> None:
    header = {A_KEY: entry("F32", [2, 4], 0, 32), B_KEY: entry("F32", [4, 2], 32, 64)}
    folder = folder_with_weights(tmp_path, header, bytes(40))

    assert_rejected(home, folder, (
        f"{folder / 'adapter_model.safetensors'}: not a valid safetensors file (tensor "
        f"'{B_KEY}' ends at byte 64 of the data, but the file has only 40 data bytes); the "
        "file may be truncated, download or save it again"
    ))


def test_shape_disagrees_with_bytes(home: Path, tmp_path: Path) -> None:
    header = {A_KEY: entry("F32", [2, 4], 0, 32), B_KEY: entry("F16", [4, 2], 32, 64)}
    folder = folder_with_weights(tmp_path, header, bytes(64))

    assert_rejected(home, folder, (
        f"{folder / 'adapter_model.safetensors'}: not a valid safetensors file (tensor "
        f"'{B_KEY}' has dtype F16 and shape [4, 2], which take 16 bytes, but its data_offsets "
        "[32, 64] hold 32); the file is damaged or was not written by a safetensors writer; "
        "save it again"
    ))


def test_unknown_dtype_and_bad_shape(home: Path, tmp_path: Path) -> None:
    header = {A_KEY: entry("F31", [2, 4], 0, 32), B_KEY: {**entry("F32", [4, 2], 32, 64), "shape": [4, -2]}}
    folder = folder_with_weights(tmp_path, header, bytes(64))

    assert_rejected(home, folder, (
        f"{folder / 'adapter_model.safetensors'}: not a valid safetensors file (tensor "
        f"'{A_KEY}' has dtype 'F31'; expected one of F64, F32, F16, BF16, I64, I32, I16, I8, "
        f"U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2; tensor '{B_KEY}' has shape [4, -2]; "
        "expected a list of non-negative integers); the file is damaged or was not written by "
        "a safetensors writer; save it again"
    ))


def test_duplicate_tensor_names(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(CONFIG))
    duplicate = json.dumps(entry("F32", [2, 4], 0, 32))
    text = f'{{"{A_KEY}": {duplicate}, "{A_KEY}": {duplicate}}}'
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(struct.pack("<Q", len(text)) + text.encode() + bytes(32))

    assert_rejected(home, folder, (
        f"{weights}: the safetensors header is not valid JSON (the header names '{A_KEY}' "
        "more than once)"
    ))


@pytest.mark.parametrize("value, label", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_nonfinite_refused_unless_allowed(home: Path, tmp_path: Path, value: float, label: str) -> None:
    tensors = lora_tensors(MODULES, seed=3)
    tensors[B_KEY][0, 0] = value
    tensors[B_KEY][1, 1] = value
    folder = write_peft_folder(tmp_path / label, CONFIG, tensors)

    assert_rejected(home, folder, (
        f"{folder}: 1 tensors contain NaN or infinite values: {B_KEY} (2); such an adapter "
        "breaks any model it is applied to. Fix the training run, or pass allow_nonfinite=True "
        "(--allow-nonfinite) to store it anyway"
    ))
    allowed = run(home, "add", folder, "--name", "hostile", "--allow-nonfinite")
    assert allowed.exit_code == 0, allowed.output


def test_symlink_out_of_folder(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "private"
    elsewhere.mkdir()
    (elsewhere / "secret.json").write_text(json.dumps(CONFIG))
    folder = synthetic_adapter(tmp_path / "linked", MODULES, r=2)
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to(Path("..") / "private" / "secret.json")

    assert_rejected(home, folder, (
        f"{folder}: {folder / 'adapter_config.json'} -> {elsewhere / 'secret.json'} leads "
        "outside the adapter folder; copy the real files into the folder (cp -L) if you mean "
        "to import them"
    ))


def test_symlink_inside_folder_and_cache_snapshot_allowed(home: Path, tmp_path: Path) -> None:
    # The Hugging Face cache layout: snapshots/<revision>/<file> -> ../../blobs/<hash>.
    repo = tmp_path / "models--org--adapter"
    source = synthetic_adapter(tmp_path / "source", MODULES, seed=5, r=2)
    snapshot_folder = repo / "snapshots" / "abc123"
    snapshot_folder.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (source / name).rename(repo / "blobs" / name)
        (snapshot_folder / name).symlink_to(Path("..") / ".." / "blobs" / name)

    result = run(home, "add", snapshot_folder, "--name", "cached")

    assert result.exit_code == 0, result.output


def test_manifest_with_parent_path_rejected(home: Path) -> None:
    manifest = {
        "files": [{"path": "../../escape.json", "sha256": "a" * 64, "size": 1}],
        "kind": "adapter", "metadata": {}, "parents": [], "store": "adapterhub-manifest",
        "version": 1,
    }
    with Store(home) as store:
        digest = store.put_bytes(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())

    exported = run(home, "export", digest, "-o", home.parent / "out")
    reindexed = run(home, "reindex")

    message = (
        f"Invalid manifest in blob {digest}:\n  - file path '../../escape.json' contains a "
        "'..' segment\nFix the listed values and build the manifest again. Use relative paths "
        "with '/' between folders, such as 'adapter/config.json'."
    )
    assert exported.exit_code == 1
    assert exported.output == f"Error: {message}\n"
    assert not (home.parent / "escape.json").exists()
    assert reindexed.exit_code == 0
    assert message in reindexed.output


class _Payload:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/adapterhub-pwned",))


def test_bin_with_code_rejected(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(CONFIG))
    weights = folder / "adapter_model.bin"
    weights.write_bytes(pickle.dumps({A_KEY: _Payload()}, protocol=2))
    before = snapshot(home)

    result = run(home, "add", folder, "--name", "hostile")

    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: {weights}: cannot be loaded as a weights-only PyTorch file (Weights only load "
        "failed."
    )
    assert result.output.endswith("); convert it to safetensors with the tool that trained it\n")
    assert snapshot(home) == before
    assert not Path("/tmp/adapterhub-pwned").exists()


def test_bin_with_non_tensor_values_rejected(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(CONFIG))
    torch.save({A_KEY: torch.zeros(2, 4), B_KEY: 3, "notes": ["a"]}, folder / "adapter_model.bin")

    assert_rejected(home, folder, (
        f"{folder / 'adapter_model.bin'}: expected a mapping of tensor names to tensors, but "
        f"these entries are not tensors under string names: '{B_KEY}' (int), 'notes' (list); "
        "save only the adapter's state dict"
    ))


@pytest.mark.parametrize("config, message", [
    ('["LORA"]', "adapter_config.json must hold a JSON object, found list"),
    ('"LORA"', "adapter_config.json must hold a JSON object, found str"),
    (json.dumps({**CONFIG, "r": 10**9}),
     "r = 1000000000 in adapter_config.json; expected an integer from 1 to 65536"),
    (json.dumps({**CONFIG, "r": -4}), "r = -4 in adapter_config.json; expected an integer from 1 to 65536"),
    (json.dumps({**CONFIG, "r": 2.5}), "r = 2.5 in adapter_config.json; expected an integer from 1 to 65536"),
    (json.dumps({**CONFIG, "rank_pattern": {"q_proj": 0}, "lora_alpha": "big"}),
     ("invalid values in adapter_config.json: lora_alpha = 'big' is not a finite number; "
      "rank_pattern['q_proj'] = 0 is not an integer from 1 to 65536; save the adapter again "
      "with PEFT")),
    (json.dumps({**CONFIG, "alpha_pattern": {"(": 2}, "modules_to_save": [{"a": 1}]}),
     ("invalid values in adapter_config.json: modules_to_save = [{'a': 1}] is not a list of "
      "names; alpha_pattern key '(' is not a valid regular expression (missing ), unterminated "
      "subpattern at position 0); save the adapter again with PEFT")),
])
def test_invalid_config_rejected(home: Path, tmp_path: Path, config: str, message: str) -> None:
    folder = synthetic_adapter(tmp_path / "config", MODULES, r=2)
    (folder / "adapter_config.json").write_text(config)

    assert_rejected(home, folder, f"{folder}: {message}")


def test_integer_factors_rejected(home: Path, tmp_path: Path) -> None:
    tensors = {key: value.to(torch.int32) for key, value in lora_tensors(MODULES, seed=1).items()}
    folder = write_peft_folder(tmp_path / "ints", CONFIG, tensors)

    assert_rejected(home, folder, (
        f"{folder}: invalid LoRA factors:\n  module 'model.q_proj': lora_A has dtype torch.int32 "
        "and lora_B torch.int32, but LoRA factors must be floating point"
    ))


def test_bad_lineage_rejected(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "lineage"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(CONFIG))
    from safetensors.torch import save_file

    save_file(lora_tensors(MODULES, seed=2), str(folder / "adapter_model.safetensors"),
              metadata={"adapterhub.lineage": json.dumps({"parents": [{"id": "../x"}]})})

    assert_rejected(home, folder, (
        f"{folder}: 'adapterhub.lineage' metadata must be a JSON object whose 'parents' are "
        "objects with a 64-digit hex 'id', a numeric 'weight' and a string 'label'; compose "
        "the adapter again to rewrite its recipe"
    ))
