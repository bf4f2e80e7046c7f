"""LyCORIS LoHa and LoKr files: exact updates, lossless round trips, composition with LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes

from adapterhub import formats
from adapterhub.compose.engine import ComposeInput, compose
from adapterhub.compose.options import ComposeOptions
from adapterhub.errors import AdapterFormatError, ExportError
from adapterhub.formats import kohya, lycoris
from adapterhub.library import Library
from tests.adapterhub.formats.sd_builders import (
    kohya_delta,
    lora_group,
    read_groups,
    relative_error,
    write_kohya,
)

CROSS_K = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
CONV1 = "lora_unet_down_blocks_0_resnets_0_conv1"
CONV2 = "lora_unet_down_blocks_0_resnets_0_conv2"
TUCKER = "i j k l, j r, i p -> p r k l"


def _random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return 0.2 * torch.randn(*shape, generator=generator)


def _loha_file(path: Path) -> Path:
    generator = torch.Generator().manual_seed(11)
    modules = {
        CROSS_K: {"hada_w1_a": _random(generator, 320, 4), "hada_w1_b": _random(generator, 4, 768),
                  "hada_w2_a": _random(generator, 320, 4), "hada_w2_b": _random(generator, 4, 768),
                  "alpha": torch.tensor(2.0)},
        CONV1: {"hada_w1_a": _random(generator, 32, 2), "hada_w1_b": _random(generator, 2, 32 * 9),
                "hada_w2_a": _random(generator, 32, 2), "hada_w2_b": _random(generator, 2, 32 * 9)},
        CONV2: {"hada_t1": _random(generator, 2, 2, 3, 3), "hada_w1_a": _random(generator, 2, 32),
                "hada_w1_b": _random(generator, 2, 32), "hada_t2": _random(generator, 2, 2, 3, 3),
                "hada_w2_a": _random(generator, 2, 32), "hada_w2_b": _random(generator, 2, 32),
                "alpha": torch.tensor(1.0)},
    }
    return write_kohya(path, modules, {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "loha"}'})


def _lokr_file(path: Path) -> Path:
    generator = torch.Generator().manual_seed(12)
    modules = {
        CROSS_K: {"lokr_w1": _random(generator, 4, 4), "lokr_w2_a": _random(generator, 80, 2),
                  "lokr_w2_b": _random(generator, 2, 192), "alpha": torch.tensor(1.0)},
        CONV1: {"lokr_w1": _random(generator, 4, 4), "lokr_w2": _random(generator, 8, 8, 3, 3),
                "alpha": torch.tensor(7.0)},
        CONV2: {"lokr_w1_a": _random(generator, 4, 1), "lokr_w1_b": _random(generator, 1, 4),
                "lokr_t2": _random(generator, 2, 2, 3, 3), "lokr_w2_a": _random(generator, 2, 8),
                "lokr_w2_b": _random(generator, 2, 8), "alpha": torch.tensor(4.0)},
    }
    return write_kohya(path, modules)


def _loha_reference(group: dict[str, torch.Tensor]) -> torch.Tensor:
    g = {key: value.double() for key, value in group.items()}
    if "hada_t1" in g:
        first = torch.einsum(TUCKER, g["hada_t1"], g["hada_w1_b"], g["hada_w1_a"])
        second = torch.einsum(TUCKER, g["hada_t2"], g["hada_w2_b"], g["hada_w2_a"])
    else:
        first, second = g["hada_w1_a"] @ g["hada_w1_b"], g["hada_w2_a"] @ g["hada_w2_b"]
    rank = g["hada_w1_b"].shape[0]
    scale = float(g["alpha"]) / rank if "alpha" in g else 1.0
    delta = scale * first * second
    return delta.reshape(delta.shape[0], -1)


def _lokr_reference(group: dict[str, torch.Tensor]) -> torch.Tensor:
    g = {key: value.double() for key, value in group.items()}
    w1 = g["lokr_w1"] if "lokr_w1" in g else g["lokr_w1_a"] @ g["lokr_w1_b"]
    if "lokr_t2" in g:
        w2 = torch.einsum(TUCKER, g["lokr_t2"], g["lokr_w2_b"], g["lokr_w2_a"])
    elif "lokr_w2" in g:
        w2 = g["lokr_w2"]
    else:
        w2 = g["lokr_w2_a"] @ g["lokr_w2_b"]
    rank = next((g[key].shape[0] for key in ("lokr_w2_b", "lokr_w1_b") if key in g), None)
    scale = float(g["alpha"]) / rank if rank is not None else 1.0
    # kron(w1, w2)[i·c + k, j·d + l, …] = w1[i, j] · w2[k, l, …], with any kernel dimensions of w2.
    delta = scale * torch.einsum("ij,kl...->ikjl...", w1, w2)
    return delta.reshape(w1.shape[0] * w2.shape[0], -1)


@pytest.mark.parametrize(("build", "reference", "peft_type"),
                         [(_loha_file, _loha_reference, "LOHA"), (_lokr_file, _lokr_reference, "LOKR")])
def test_delta_matches_reference(tmp_path, build, reference, peft_type):
    source = build(tmp_path / "lycoris.safetensors")
    adapter = formats.load(source)

    assert formats.detect(source) is lycoris
    assert adapter.peft_type == peft_type
    for key, group in read_groups(source).items():
        name = "unet." + {CROSS_K: "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
                          CONV1: "down_blocks.0.resnets.0.conv1",
                          CONV2: "down_blocks.0.resnets.0.conv2"}[key]
        module = adapter.modules[name]
        # The factors are stored in float32, the file's dtype.
        error = relative_error(module.delta(), reference(group))
        assert error <= 1e-6, key
        assert module.conversion_error == pytest.approx(error, rel=1e-3, abs=1e-12), key
    conv = adapter.modules["unet.down_blocks.0.resnets.0.conv1"]
    assert list(conv.lora_A.shape[1:]) == [32, 3, 3]
    assert adapter.describe()["base_family"] == "sd1"


@pytest.mark.parametrize("build", [_loha_file, _lokr_file])
def test_lycoris_file_round_trips_tensors(tmp_path, build):
    source = build(tmp_path / "lycoris.safetensors")

    written = load_bytes(lycoris.to_files(formats.load(source))[lycoris.STORED_NAME])

    original = load_bytes(source.read_bytes())
    assert sorted(written) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(written[key], tensor), key


def test_loha_composes_with_lora(tmp_path):
    loha = formats.load(_loha_file(tmp_path / "loha.safetensors"))
    generator = torch.Generator().manual_seed(4)
    lora_group_k = lora_group(320, 768, 4, generator, alpha=2.0)
    lora = formats.load(write_kohya(tmp_path / "lora.safetensors", {CROSS_K: lora_group_k}))

    result = compose([ComposeInput(loha, "loha", "a" * 64), ComposeInput(lora, "lora", "b" * 64)],
                     ComposeOptions(weights=(1.0, -0.5), dtype="float64"))

    name = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    expected = _loha_reference(read_groups(tmp_path / "loha.safetensors")[CROSS_K]) - 0.5 * kohya_delta(lora_group_k)
    assert relative_error(result.adapter.modules[name].delta(), expected) <= 1e-6
    assert result.adapter.peft_type == "LORA"
    assert 0 < result.lineage["modules"][name]["conversion_error"] <= 1e-6
    assert len(result.adapter.modules) == 3


def test_loha_export_to_kohya_refused(tmp_path):
    adapter = formats.load(_loha_file(tmp_path / "loha.safetensors"))

    with pytest.raises(ExportError) as error:
        kohya.to_files(adapter)

    assert str(error.value) == (
        "cannot write a kohya file:\n"
        "  module 'unet.down_blocks.0.resnets.0.conv1' is loha, which kohya LoRA keys cannot hold; "
        "export with --format lycoris, or compose it to convert it to LoRA\n"
        "  module 'unet.down_blocks.0.resnets.0.conv2' is loha, which kohya LoRA keys cannot hold; "
        "export with --format lycoris, or compose it to convert it to LoRA\n"
        "  module 'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k' is loha, which "
        "kohya LoRA keys cannot hold; export with --format lycoris, or compose it to convert it "
        "to LoRA"
    )


def test_mixed_loha_lokr_refused(tmp_path):
    generator = torch.Generator().manual_seed(1)
    modules = {
        CROSS_K: {"hada_w1_a": _random(generator, 320, 2), "hada_w1_b": _random(generator, 2, 768),
                  "hada_w2_a": _random(generator, 320, 2), "hada_w2_b": _random(generator, 2, 768)},
        CONV1: {"lokr_w1": _random(generator, 4, 4), "lokr_w2": _random(generator, 8, 8, 3, 3)},
    }
    source = write_kohya(tmp_path / "mixed.safetensors", modules)

    with pytest.raises(AdapterFormatError) as error:
        formats.load(source)

    assert str(error.value) == (
        f"{source}: the file mixes LoHa and LoKr modules "
        "(unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k and "
        "unet.down_blocks.0.resnets.0.conv1); adapterhub reads one kind per file, so split it"
    )


def test_lora_in_lycoris_format_reads_back(corpus, store_home):
    library = Library.open(store_home)
    outcome = library.compose([str(corpus / "sd15-diffusers-unet-prefixed")], ComposeOptions(),
                              name="merged", fmt="lycoris")

    stored = library.load("merged")
    assert library.show(outcome.artifact_id)["metadata"]["format"] == "lycoris"
    assert stored.peft_type == "LORA"
    assert len(stored.modules) == 128
