"""Reading and writing PEFT folders and .lora files, on the real corpus and on broken input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from adapterhub import formats
from adapterhub.adapter import LoraAdapter
from adapterhub.errors import AdapterFormatError, UnsupportedAdapterError
from adapterhub.formats import peft, single_file
from tests.adapterhub.builders import LORA_DEFAULTS, lora_tensors, synthetic_adapter, write_peft_folder
from tests.conftest import CORPUS_LORA


def _assert_same_tensors(first: dict, second: dict) -> None:
    assert sorted(first) == sorted(second)
    for key in first:
        assert first[key].dtype == second[key].dtype, key
        assert first[key].shape == second[key].shape, key
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", CORPUS_LORA)
def test_corpus_adapter_round_trips(corpus, name, tmp_path):
    adapter = formats.load(corpus / name)

    peft_files = peft.to_files(adapter)
    lora_files = single_file.to_files(adapter)
    (tmp_path / "adapter.lora").write_bytes(lora_files["adapter.lora"])
    back_from_lora = formats.load(tmp_path / "adapter.lora")

    _assert_same_tensors(adapter.tensors, load_bytes(peft_files["adapter_model.safetensors"]))
    _assert_same_tensors(adapter.tensors, back_from_lora.tensors)
    assert back_from_lora.config == adapter.config
    assert peft.to_files(back_from_lora) == peft_files


@pytest.mark.parametrize("name", CORPUS_LORA)
def test_corpus_adapter_modules_resolve(corpus, name):
    adapter = formats.load(corpus / name)
    source = json.loads((corpus / name / "adapter_config.json").read_text())

    assert adapter.modules
    for module in adapter.modules.values():
        assert module.lora_A.shape[0] == module.rank
        assert module.lora_B.shape[1] == module.rank
        assert module.scale > 0
    assert adapter.config == source


def test_gpt2_target_matches_two_shapes(corpus):
    adapter = formats.load(corpus / "gpt2-lora-tigrinya-causal")

    attn = adapter.modules["transformer.h.0.attn.c_proj"]
    mlp = adapter.modules["transformer.h.0.mlp.c_proj"]

    assert list(attn.lora_A.shape) == [8, 768]
    assert list(mlp.lora_A.shape) == [8, 3072]
    assert attn.scale == 4.0


def test_float16_adapter_keeps_dtype(corpus):
    adapter = formats.load(corpus / "opencalm-1b-lora-r1-fp16")

    assert adapter.dtype() == torch.float16
    assert adapter.describe()["dtype"] == "float16"
    assert {m.rank for m in adapter.modules.values()} == {1}
    assert next(iter(adapter.modules.values())).scale == 32.0


def test_adalora_folds_singular_values(corpus):
    adapter = formats.load(corpus / "bert-tiny-adalora-emot")
    prefix = "base_model.model.bert.encoder.layer.0.attention.self.query"
    module = adapter.modules["bert.encoder.layer.0.attention.self.query"]

    a, b, e = (adapter.tensors[f"{prefix}.{part}"] for part in ("lora_A", "lora_B", "lora_E"))
    expected = (b.double() @ (a.double() * e.double())) * 64 / (12 + 1e-5)

    # E is folded into A in float32, so the product is exact up to float32 rounding.
    assert torch.linalg.norm(module.delta() - expected) <= 1e-6 * torch.linalg.norm(expected)
    assert module.rank == 12


def test_rank_and_alpha_pattern_resolve(tmp_path):
    folder = synthetic_adapter(
        tmp_path / "patterned",
        {"model.layers.0.q_proj": (16, 16, 8), "model.layers.0.v_proj": (16, 16, 4)},
        r=4, lora_alpha=8, rank_pattern={"q_proj": 8}, alpha_pattern={"layers.0.q_proj": 32},
    )
    adapter = formats.load(folder)

    q = adapter.modules["model.layers.0.q_proj"]
    v = adapter.modules["model.layers.0.v_proj"]

    assert (q.rank, q.alpha, q.scale) == (8, 32.0, 4.0)
    assert (v.rank, v.alpha, v.scale) == (4, 8.0, 2.0)


def test_rslora_scale_uses_square_root(tmp_path):
    folder = synthetic_adapter(tmp_path / "rs", {"q_proj": (8, 8, 16)}, r=16, lora_alpha=8,
                               use_rslora=True)

    module = formats.load(folder).modules["q_proj"]

    assert module.scale == pytest.approx(8 / 4)


def test_target_modules_regex_kept_whole(tmp_path):
    pattern = r".*\.(q_proj|v_proj)"
    folder = synthetic_adapter(tmp_path / "regex", {"model.layers.0.q_proj": (8, 8, 4)},
                               target_modules=pattern)

    adapter = formats.load(folder)

    assert adapter.config["target_modules"] == pattern
    assert json.loads(peft.to_files(adapter)["adapter_config.json"])["target_modules"] == pattern


def test_serialization_is_deterministic(tmp_path):
    folder = synthetic_adapter(tmp_path / "a", {"q_proj": (3, 2, 1)}, seed=7, r=1)
    adapter = formats.load(folder)
    reordered = LoraAdapter(dict(reversed(list(adapter.config.items()))),
                            dict(reversed(list(adapter.tensors.items()))), {"format": "pt"})

    files = peft.to_files(adapter)

    assert files == peft.to_files(reordered)
    assert single_file.to_files(adapter) == single_file.to_files(reordered)


def test_lora_file_golden_bytes():
    tensors = {
        "base_model.model.q_proj.lora_A.weight": torch.tensor([[1.0, 2.0]]),
        "base_model.model.q_proj.lora_B.weight": torch.tensor([[0.5], [-1.0]]),
    }
    config = {"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q_proj"]}

    data = single_file.to_files(LoraAdapter(config, tensors, {}))["adapter.lora"]

    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    assert header["__metadata__"] == {
        "adapter_config": '{"lora_alpha":2,"peft_type":"LORA","r":1,"target_modules":["q_proj"]}',
        "format": "pt",
    }
    assert data[8 + header_length:] == (
        torch.tensor([1.0, 2.0, 0.5, -1.0]).numpy().tobytes()
    )
    assert hashlib.sha256(data).hexdigest() == (
        "94dbd55b76c699023c66659358e6071f4c7d1c30d31f7e6031ecdfedaeaa36f3"
    )


def test_bin_adapter_loads_weights_only(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    tensors = lora_tensors({"q_proj": (4, 4, 2)}, seed=1)
    (folder / "adapter_config.json").write_text(json.dumps({**LORA_DEFAULTS, "r": 2}))
    torch.save(tensors, folder / "adapter_model.bin")

    adapter = formats.load(folder)

    _assert_same_tensors(adapter.tensors, tensors)


class _NotATensor:
    pass


def test_bin_with_objects_rejected(tmp_path):
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(LORA_DEFAULTS))
    torch.save({"base_model.model.q.lora_A.weight": _NotATensor()}, folder / "adapter_model.bin")

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    message = str(error.value)
    assert message.startswith(f"{folder / 'adapter_model.bin'}: cannot be loaded as a weights-only "
                              "PyTorch file (")
    assert message.endswith("); convert it to safetensors with the tool that trained it")


def test_truncated_safetensors_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "cut", {"q_proj": (64, 64, 4)})
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value).startswith(f"{weights}: not a valid safetensors file (")
    assert str(error.value).endswith("); the file may be truncated, download or save it again")


def test_truncated_header_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "cut", {"q_proj": (4, 4, 2)})
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    length = int.from_bytes(weights.read_bytes()[:8], "little")
    assert str(error.value) == (
        f"{weights}: header length {length} exceeds the file (20 bytes) or the limit of "
        "100000000 bytes; the file is truncated or not safetensors"
    )


def test_invalid_config_json_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "bad-json", {"q_proj": (4, 4, 2)})
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": 4,,}')

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value) == (
        f"{folder / 'adapter_config.json'}: invalid JSON at line 2, column 9: "
        "Expecting property name enclosed in double quotes"
    )


def test_config_not_object_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "list", {"q_proj": (4, 4, 2)})
    (folder / "adapter_config.json").write_text('["LORA"]')

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value) == f"{folder}: adapter_config.json must hold a JSON object, found list"


def test_absurd_rank_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "huge", {"q_proj": (4, 4, 2)}, r=10**9)

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value) == (
        f"{folder}: r = 1000000000 in adapter_config.json; expected an integer from 1 to 65536"
    )


def test_lora_a_without_b_rejected(tmp_path):
    tensors = lora_tensors({"model.q_proj": (4, 4, 2)}, seed=0)
    del tensors["base_model.model.model.q_proj.lora_B.weight"]
    folder = write_peft_folder(tmp_path / "half", {**LORA_DEFAULTS, "r": 2}, tensors)

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value) == (
        f"{folder}: invalid LoRA factors:\n  module 'model.q_proj' has lora_A but no lora_B; "
        "every LoRA module needs both factors"
    )


def test_empty_state_dict_rejected(tmp_path):
    folder = write_peft_folder(tmp_path / "empty", dict(LORA_DEFAULTS), {})

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value) == (
        f"{folder}: the weights file contains no tensors; check that the adapter was saved"
    )


def test_rank_disagreeing_with_config_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "mismatch", {"q_proj": (4, 4, 2)}, r=8)

    with pytest.raises(AdapterFormatError) as error:
        formats.load(folder)

    assert str(error.value) == (
        f"{folder}: invalid LoRA factors:\n  module 'q_proj' stores rank 2 but the config gives "
        "it rank 8; fix r or rank_pattern in adapter_config.json"
    )


def test_foreign_adapter_rejected(corpus):
    folder = corpus / "negative-lerobot-foreign-adapter"

    with pytest.raises(UnsupportedAdapterError) as error:
        formats.load(folder)

    assert str(error.value) == (
        f"{folder}: adapter_config.json has no 'peft_type' (keys: base_model), so it is not a "
        "PEFT adapter; save the adapter with PEFT's save_pretrained"
    )


def test_unrecognised_path_lists_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")

    with pytest.raises(AdapterFormatError) as error:
        formats.detect(tmp_path / "notes.txt")

    assert str(error.value) == (
        f"{tmp_path / 'notes.txt'}: not a recognised adapter (expected a PEFT folder, a .lora "
        "file or the .safetensors file of a kohya, LyCORIS or diffusers LoRA); supported "
        "formats: peft, lora, lycoris, kohya, diffusers"
    )


def test_lora_file_without_config_rejected(tmp_path):
    path = tmp_path / "bare.lora"
    save_file(lora_tensors({"q": (2, 2, 1)}, seed=0), str(path))

    with pytest.raises(AdapterFormatError) as error:
        formats.load(path)

    assert str(error.value) == (
        f"{path}: no 'adapter_config' entry in the safetensors metadata, so the adapter config "
        "is unknown; import the PEFT folder it came from instead"
    )


def test_source_files_prefer_safetensors(tmp_path):
    folder = synthetic_adapter(tmp_path / "both", {"q_proj": (4, 4, 2)})
    (folder / "adapter_model.bin").write_bytes(b"unused")
    (folder / "README.md").write_text("# card\n")

    names = [name for name, _ in peft.source_files(folder)]

    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_lora_path_is_detected_by_metadata(tmp_path):
    folder = synthetic_adapter(tmp_path / "a", {"q_proj": (4, 4, 2)}, r=2)
    data = single_file.to_files(formats.load(folder))["adapter.lora"]
    Path(tmp_path / "renamed.safetensors").write_bytes(data)

    assert formats.detect(tmp_path / "renamed.safetensors") is single_file
