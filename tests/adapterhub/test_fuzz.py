"""Fuzzing the format readers with mutated real adapters from the corpus.

Each input is a corpus adapter with seeded mutations: flipped, overwritten, inserted or cut
bytes, and structured edits of the safetensors header and the adapter config (wrong dtypes,
shapes, offsets, types and values). Reading it the way ``add`` does (``formats.load``, then
``describe``) must either succeed or raise one of the project's own errors. Any other
exception fails the test, and so does an input that takes longer than ``INPUT_TIMEOUT_S``.
The failure names the case, and ``mutated_input(kind, seed, folder)`` rebuilds its input.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import struct
import tempfile
import traceback
from pathlib import Path

import pytest
import torch

from adapterhub import formats
from adapterhub.adapter import nonfinite_tensors
from adapterhub.errors import AdapterHubError
from adapterhub.formats import single_file
from store.errors import StoreError
from tests.conftest import CORPUS

INPUTS = 2000
INPUT_TIMEOUT_S = 10.0
SEED = 7
KINDS = ("weights", "weights", "header", "config", "lora", "lora", "bin")
SEED_ADAPTERS = ("bert-tiny-adalora-emot", "opencalm-1b-lora-r1-fp16")

CONFIG_KEYS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules",
               "modules_to_save", "peft_type", "base_model_name_or_path", "use_rslora", "task_type")
ODD_VALUES = (None, -1, 0, 1, 3, 2**40, 1.5, float("nan"), "x", "(", [], {}, [1], ["q"],
              {"a": "b"}, {"(": 0}, {"q": 2**40}, True, [[[]]])
DTYPES = ("F32", "F16", "BF16", "I32", "U8", "BOOL", "F64", "F8_E4M3", "C64", "", 7)

_sources: dict[str, dict[str, bytes]] = {}


def seed_files(adapter: str) -> dict[str, bytes]:
    """Return the files of a corpus adapter, plus its .lora and .bin forms, read once per process."""
    if adapter not in _sources:
        folder = CORPUS / adapter
        files = {path.name: path.read_bytes() for path in folder.iterdir() if path.name != "SOURCE.md"}
        loaded = formats.load(folder)
        files["adapter.lora"] = single_file.to_files(loaded)["adapter.lora"]
        with tempfile.TemporaryFile() as stream:
            torch.save(loaded.tensors, stream)
            stream.seek(0)
            files["adapter_model.bin"] = stream.read()
        _sources[adapter] = files
    return _sources[adapter]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Apply one to four byte-level mutations, half of them inside the first kilobyte."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        end = len(buffer) if rng.random() < 0.5 else min(len(buffer), 1024)
        position = rng.randrange(max(end, 1))
        choice = rng.randrange(5)
        if choice == 0 and buffer:
            buffer[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buffer[position:position + 8] = rng.randbytes(rng.randint(1, 8))
        elif choice == 2:
            buffer[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3:
            del buffer[position:position + rng.randint(1, 64)]
        else:
            del buffer[rng.randrange(len(buffer) + 1):]
    return bytes(buffer)


def mutate_header(data: bytes, rng: random.Random) -> bytes:
    """Edit one safetensors header entry structurally and write the header back."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    names = [name for name in header if name != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]

    choice = rng.randrange(8)
    if choice == 0:
        entry["dtype"] = rng.choice(DTYPES)
    elif choice == 1:
        shape = entry["shape"]
        if shape:
            shape[rng.randrange(len(shape))] = rng.choice([0, -1, 1, 2**31, 2**62, 1.5, "2", None])
        else:
            shape.append(3)
    elif choice == 2:
        offsets = entry["data_offsets"]
        offsets[rng.randrange(2)] += rng.choice([-4, -1, 1, 4, 10**12, -(10**12)])
    elif choice == 3:
        entry["shape"] = list(reversed(entry["shape"])) + rng.choice([[], [1], [2]])
    elif choice == 4:
        header[name.replace("lora_A", "lora_B") if "lora_A" in name else name + "x"] = entry
    elif choice == 5:
        header["__metadata__"] = rng.choice([[], {"a": 1}, "text", {"adapterhub.lineage": "{"}])
    elif choice == 6:
        header[name] = rng.choice([None, [], "x", {"dtype": "F32"}])
    else:
        del header[name]

    encoded = json.dumps(header).encode()
    prefix = len(encoded) + rng.choice([0, 0, 0, -1, 1, 100])
    return struct.pack("<Q", max(prefix, 0)) + encoded + body


def mutate_config(data: bytes, rng: random.Random) -> bytes:
    """Replace one to three adapter config values by values of odd types or ranges."""
    config = json.loads(data)
    for _ in range(rng.randint(1, 3)):
        config[rng.choice(CONFIG_KEYS)] = rng.choice(ODD_VALUES)
    if rng.random() < 0.1:
        return json.dumps(rng.choice([[config], "config", 3, None])).encode()
    return json.dumps(config).encode()


def mutated_input(kind: str, seed: int, folder: Path) -> Path:
    """Write the input for ``(kind, seed)`` under ``folder`` and return the path to load."""
    rng = random.Random(seed)
    files = seed_files(rng.choice(SEED_ADAPTERS))
    if kind == "lora":
        target = folder / "adapter.lora"
        data = files["adapter.lora"]
        target.write_bytes(mutate_header(data, rng) if rng.random() < 0.3 else mutate_bytes(data, rng))
        return target

    (folder / "adapter_config.json").write_bytes(
        mutate_config(files["adapter_config.json"], rng) if kind == "config" else files["adapter_config.json"]
    )
    if kind == "bin":
        (folder / "adapter_model.bin").write_bytes(mutate_bytes(files["adapter_model.bin"], rng))
        return folder
    weights = files["adapter_model.safetensors"]
    if kind == "weights":
        weights = mutate_bytes(weights, rng)
    elif kind == "header":
        weights = mutate_header(weights, rng)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def read_one(kind: str, seed: int) -> tuple[str, str]:
    """Read one mutated input as ``add`` would; return ("ok" | "rejected" | "crash", detail)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        try:
            adapter = formats.load(mutated_input(kind, seed, Path(scratch)))
            adapter.describe()
            nonfinite_tensors(adapter)
        except (AdapterHubError, StoreError) as exc:
            return "rejected", type(exc).__name__
        except Exception:  # noqa: BLE001 - anything else is the bug this test looks for
            return "crash", traceback.format_exc()
    return "ok", ""


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the adapter corpus is missing")
def test_readers_survive_mutated_adapters() -> None:
    rng = random.Random(SEED)
    cases = [(rng.choice(KINDS), rng.randrange(2**32)) for _ in range(INPUTS)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])

    crashes = []
    outcomes = {"ok": 0, "rejected": 0}
    with context.Pool(processes=2) as pool:
        pending = [(case, pool.apply_async(read_one, case)) for case in cases]
        for case, result in pending:
            try:
                outcome, detail = result.get(timeout=INPUT_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                pytest.fail(f"reading mutated_input{case} took more than {INPUT_TIMEOUT_S} s")
            if outcome == "crash":
                crashes.append(f"mutated_input{case}:\n{detail}")
            else:
                outcomes[outcome] += 1

    assert crashes == []
    # The mutations must not all be caught by the first check, nor all be harmless.
    assert outcomes["rejected"] > INPUTS // 4
    assert outcomes["ok"] > INPUTS // 20
