"""The three SD 1.5 spellings of the corpus: one canonical naming, each file's own scaling."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adapterhub import formats
from adapterhub.library import Library

ATTNPROCS = "sd15-diffusers-attnprocs"
PREFIXED = "sd15-diffusers-unet-prefixed"
PEFT_UNET = "sd15-peft-unet-adapter"
FIRST_MODULE = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"


def _attnprocs_keys(name: str) -> tuple[str, str]:
    path, projection = name.removeprefix("unet.").removesuffix(".0").rsplit(".", 1)
    stem = f"{path}.processor.{projection}_lora"
    return f"{stem}.down.weight", f"{stem}.up.weight"


def _prefixed_keys(name: str) -> tuple[str, str]:
    return f"{name}.lora.down.weight", f"{name}.lora.up.weight"


def _peft_keys(name: str) -> tuple[str, str]:
    path = "base_model.model." + name.removeprefix("unet.")
    return f"{path}.lora_A.weight", f"{path}.lora_B.weight"


def test_three_spellings_share_canonical_names(corpus):
    attnprocs = formats.load(corpus / ATTNPROCS)
    prefixed = formats.load(corpus / PREFIXED)
    peft_unet = formats.load(corpus / PEFT_UNET)

    assert len(attnprocs.modules) == 128
    assert set(attnprocs.modules) == set(prefixed.modules)
    assert len(peft_unet.modules) == 96
    assert set(peft_unet.modules) < set(prefixed.modules)
    assert FIRST_MODULE in peft_unet.modules
    assert {name.rsplit(".", 1)[1] for name in peft_unet.modules} == {"to_q", "to_k", "to_v"}
    assert {name.rsplit(".", 2)[1] for name in set(prefixed.modules) - set(peft_unet.modules)} == {"to_out"}


@pytest.mark.parametrize(
    ("folder", "weights", "keys", "scale"),
    [
        (ATTNPROCS, "pytorch_lora_weights.safetensors", _attnprocs_keys, 1.0),
        (PREFIXED, "pytorch_lora_weights.safetensors", _prefixed_keys, 1.0),
        (PEFT_UNET, "adapter_model.safetensors", _peft_keys, 4.0),
    ],
)
def test_delta_follows_each_file_scaling(corpus, folder, weights, keys, scale):
    adapter = formats.load(corpus / folder)
    raw = load_file(str(corpus / folder / weights))

    for name, module in adapter.modules.items():
        down_key, up_key = keys(name)
        assert module.scale == scale, name
        assert torch.equal(module.lora_A, raw[down_key]), name
        assert torch.equal(module.lora_B, raw[up_key]), name
    # The dense update of one module per projection, against the file's own tensors.
    for projection in ("to_q", "to_k", "to_v", "to_out.0"):
        name = f"unet.mid_block.attentions.0.transformer_blocks.0.attn2.{projection}"
        if name not in adapter.modules:
            continue
        down_key, up_key = keys(name)
        expected = scale * raw[up_key].double() @ raw[down_key].double()
        assert torch.allclose(adapter.modules[name].delta(), expected, rtol=1e-12, atol=0), name


def test_peft_folder_export_matches_folder(corpus):
    folder = formats.load(corpus / PEFT_UNET)
    exported_path = corpus / PEFT_UNET / "pytorch_lora_weights.safetensors"
    exported = formats.load(exported_path)

    assert formats.detect(exported_path).NAME == "diffusers"
    assert set(exported.modules) == set(folder.modules)
    for name, module in folder.modules.items():
        assert exported.modules[name].scale == 4.0, name
        assert torch.equal(exported.modules[name].delta(), module.delta()), name


def test_peft_folder_keeps_its_files(corpus):
    adapter = formats.load(corpus / PEFT_UNET)
    peft_module = formats.get("peft")

    written = load_file(str(corpus / PEFT_UNET / "adapter_model.safetensors"))
    assert formats.detect(corpus / PEFT_UNET) is peft_module
    assert peft_module.source_files(corpus / PEFT_UNET)[1][0] == "adapter_model.safetensors"
    assert sorted(adapter.tensors) == sorted(written)


def test_language_model_names_unchanged(corpus):
    adapter = formats.load(corpus / "gpt2-lora-demo-causal")

    assert all(name.startswith("transformer.h.") for name in adapter.modules)
    assert "base_family" not in adapter.describe()
    assert "components" not in adapter.describe()


@pytest.mark.parametrize("folder", [ATTNPROCS, PREFIXED, PEFT_UNET])
def test_sd15_family_in_metadata(corpus, folder, store_home):
    library = Library.open(store_home)
    result = library.add(corpus / folder, name="style")

    metadata = library.show(result.artifact_id)["metadata"]

    assert metadata["base_family"] == "sd1"
    assert metadata["components"] == ["unet"]


def test_diffusers_folder_exports_its_bytes(corpus, store_home, tmp_path):
    library = Library.open(store_home)
    library.add(corpus / ATTNPROCS, name="procs")

    written = library.export("procs", tmp_path, fmt="diffusers")

    assert written == [tmp_path / "pytorch_lora_weights.safetensors"]
    assert written[0].read_bytes() == (corpus / ATTNPROCS / "pytorch_lora_weights.safetensors").read_bytes()


def test_pickled_attnprocs_file_reads(corpus):
    adapter = formats.load(corpus / ATTNPROCS / "pytorch_lora_weights.bin")
    safetensors_adapter = formats.load(corpus / ATTNPROCS)

    assert set(adapter.modules) == set(safetensors_adapter.modules)
