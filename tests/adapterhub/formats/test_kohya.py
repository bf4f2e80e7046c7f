"""kohya/A1111 files: reading, writing, and lossless conversion through diffusers and the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from adapterhub import formats
from adapterhub.cli import main
from adapterhub.compose.engine import ComposeInput, compose
from adapterhub.compose.options import ComposeOptions
from adapterhub.errors import (
    ExportError,
    UnsupportedAdapterError,
    UnsupportedCompositionError,
)
from adapterhub.formats import diffusers, kohya, sd_naming
from adapterhub.library import Library
from tests.adapterhub.formats.sd_builders import (
    header_metadata,
    kohya_delta,
    kohya_from_corpus,
    lora_group,
    read_groups,
    relative_error,
    write_kohya,
)

SDXL_ATTENTION = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2"


def _sdxl_kohya(path: Path) -> Path:
    """An SDXL file as sd-scripts writes it: LDM block names, lora_te1/lora_te2, and the
    modules diffusers' own converter is known to drop."""
    generator = torch.Generator().manual_seed(3)
    modules = {
        f"{SDXL_ATTENTION}_to_k": lora_group(640, 2048, 4, generator, alpha=2.0, dtype=torch.float16),
        f"{SDXL_ATTENTION}_to_out_0": lora_group(640, 640, 4, generator, alpha=2.0, dtype=torch.float16),
        "lora_unet_output_blocks_2_2_conv": lora_group(1280, 1280, 4, generator, alpha=1.0,
                                                       kernel=(3, 3), dtype=torch.float16),
        "lora_unet_input_blocks_0_0": lora_group(320, 4, 2, generator, alpha=1.0, kernel=(3, 3),
                                                 dtype=torch.float16),
        "lora_unet_out_2": lora_group(4, 320, 2, generator, alpha=1.0, kernel=(3, 3), dtype=torch.float16),
        "lora_unet_time_embed_0": lora_group(1280, 320, 4, generator, alpha=4.0, dtype=torch.float16),
        "lora_unet_label_emb_0_0": lora_group(1280, 2816, 4, generator, alpha=4.0, dtype=torch.float16),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": lora_group(768, 768, 4, generator,
                                                                            alpha=1.0, dtype=torch.float16),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1": lora_group(5120, 1280, 4, generator, alpha=1.0,
                                                                   dtype=torch.float16),
        "lora_te2_text_projection": lora_group(1280, 1280, 4, generator, alpha=1.0, dtype=torch.float16),
    }
    return write_kohya(path, modules, {"ss_base_model_version": "sdxl_base_v1-0"})


def test_store_diffusers_round_trip_keeps_delta(corpus, store_home, tmp_path):
    source = kohya_from_corpus(corpus, tmp_path / "style.safetensors")
    library = Library.open(store_home)
    library.add(source, name="style")

    (as_diffusers,) = library.export("style", tmp_path / "style-diffusers.safetensors", fmt="diffusers")
    library.add(as_diffusers, name="style-diffusers")
    (back,) = library.export("style-diffusers", tmp_path / "back.safetensors", fmt="kohya")

    original, returned = read_groups(source), read_groups(back)
    assert sorted(returned) == sorted(original)
    for key, group in original.items():
        assert relative_error(kohya_delta(returned[key]), kohya_delta(group)) <= 1e-7, key
        assert float(returned[key]["alpha"]) == float(group["alpha"]), key
    assert header_metadata(back) == header_metadata(source)
    assert library.show("style-diffusers")["metadata"]["format"] == "diffusers"


def test_kohya_file_round_trips_tensors(corpus, tmp_path):
    source = kohya_from_corpus(corpus, tmp_path / "style.safetensors")

    written = kohya.to_files(formats.load(source))[kohya.STORED_NAME]

    original = load_bytes(source.read_bytes())
    returned = load_bytes(written)
    assert sorted(returned) == sorted(original)
    for key, tensor in original.items():
        assert returned[key].dtype == tensor.dtype, key
        assert torch.equal(returned[key], tensor), key


def test_per_module_alphas_become_alpha_pattern(corpus, tmp_path):
    adapter = formats.load(kohya_from_corpus(corpus, tmp_path / "style.safetensors"))
    conv = adapter.modules["unet.down_blocks.0.resnets.0.conv1"]
    first = adapter.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"]

    # Alphas 1 to 4 over the 128 attention modules and 4 for the conv: α = 4 is the default.
    assert (adapter.config["r"], adapter.config["lora_alpha"]) == (4, 4)
    assert adapter.config["rank_pattern"] == {"unet.down_blocks.0.resnets.0.conv1": 8}
    assert sorted(set(adapter.config["alpha_pattern"].values())) == [1, 2, 3]
    assert len(adapter.config["alpha_pattern"]) == 96
    assert (conv.kind, conv.rank, conv.alpha, conv.scale) == ("conv", 8, 4.0, 0.5)
    assert (first.alpha, first.scale) == (1.0, 0.25)
    assert adapter.metadata["ss_network_module"] == "networks.lora"
    assert adapter.describe()["base_family"] == "sd1"


def test_sdxl_file_uses_diffusers_names(tmp_path):
    adapter = formats.load(_sdxl_kohya(tmp_path / "xl.safetensors"))

    assert sorted(adapter.modules) == [
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1",
        "text_encoder_2.text_projection",
        "unet.add_embedding.linear_1",
        "unet.conv_in",
        "unet.conv_out",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
        "unet.time_embedding.linear_1",
        "unet.up_blocks.0.upsamplers.0.conv",
    ]
    assert adapter.describe()["base_family"] == "sdxl"
    assert kohya.SPELLING_KEY not in adapter.metadata


def test_dropped_modules_survive_conversion(store_home, tmp_path):
    source = _sdxl_kohya(tmp_path / "xl.safetensors")
    library = Library.open(store_home)
    library.add(source, name="xl")

    (as_diffusers,) = library.export("xl", tmp_path, fmt="diffusers")
    library.add(as_diffusers, name="xl-diffusers")
    (back,) = library.export("xl-diffusers", tmp_path / "back.safetensors", fmt="kohya")

    written = load_bytes(as_diffusers.read_bytes())
    for name in ("unet.conv_in", "unet.conv_out", "unet.time_embedding.linear_1",
                 "text_encoder_2.text_projection"):
        assert f"{name}.lora_A.weight" in written, name
    original = load_bytes(source.read_bytes())
    returned = load_bytes(back.read_bytes())
    assert sorted(returned) == sorted(original)
    for key, tensor in original.items():
        assert returned[key].dtype == tensor.dtype, key
        assert torch.equal(returned[key], tensor), key


def test_spelling_record_restores_file(tmp_path):
    generator = torch.Generator().manual_seed(5)
    attention = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2"
    modules = {
        f"{attention}_to_k": lora_group(320, 768, 4, generator, alpha=8.0, dtype=torch.float16),
        f"{attention}_to_v": lora_group(320, 768, 4, generator, alpha=None, dtype=torch.float16),
        f"{attention}_to_q": lora_group(320, 320, 4, generator, alpha=0.0, dtype=torch.float16),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": lora_group(768, 768, 4, generator,
                                                                            alpha=2.0, dtype=torch.float16),
    }
    modules[f"{attention}_to_k"]["alpha"] = torch.tensor(8.0, dtype=torch.float32)
    source = write_kohya(tmp_path / "odd.safetensors", modules)

    adapter = formats.load(source)
    written = load_bytes(kohya.to_files(adapter)[kohya.STORED_NAME])

    assert json.loads(adapter.metadata[kohya.SPELLING_KEY]) == {
        "alpha_dtypes": {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "float32"},
        "alphas": {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q": 0.0},
        "text_encoder_prefix": "lora_te1",
        "without_alpha": ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"],
    }
    assert adapter.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"].scale == 1.0
    original = load_bytes(source.read_bytes())
    assert sorted(written) == sorted(original)
    for key, tensor in original.items():
        assert written[key].dtype == tensor.dtype, key
        assert torch.equal(written[key], tensor), key


def test_dora_scale_refused_for_composition(tmp_path):
    generator = torch.Generator().manual_seed(1)
    group = lora_group(320, 320, 4, generator, alpha=4.0)
    group["dora_scale"] = torch.ones(320, 1)
    source = write_kohya(tmp_path / "dora.safetensors",
                         {"lora_unet_mid_block_attentions_0_proj_in": group})
    adapter = formats.load(source)

    with pytest.raises(UnsupportedCompositionError) as error:
        compose([ComposeInput(adapter, "dora", "0" * 64)], ComposeOptions())

    assert str(error.value) == (
        "cannot compose: dora uses DoRA: its magnitude vector rescales the whole weight, so the "
        "update is not B·A and cannot be summed. Only plain LoRA, AdaLoRA, LoHa and LoKr "
        "compose."
    )
    assert load_bytes(kohya.to_files(adapter)[kohya.STORED_NAME]).keys() == load_bytes(source.read_bytes()).keys()


def test_unrecognised_key_family_refused(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_file({f"model.diffusion_model.input_blocks.{i}.weight": torch.zeros(2) for i in range(7)}, str(path))

    with pytest.raises(UnsupportedAdapterError) as error:
        formats.detect(path)

    assert str(error.value) == (
        f"{path}: 7 tensor keys match no known key family: model.diffusion_model.input_blocks.0.weight, "
        "model.diffusion_model.input_blocks.1.weight, model.diffusion_model.input_blocks.2.weight, "
        "model.diffusion_model.input_blocks.3.weight, model.diffusion_model.input_blocks.4.weight "
        "and 2 more; expected the keys of a PEFT, kohya, LyCORIS or diffusers LoRA (see "
        "docs/formats.md); supported formats: peft, lora, lycoris, kohya, diffusers"
    )


def test_unknown_kohya_keys_listed(tmp_path):
    generator = torch.Generator().manual_seed(2)
    modules = {"lora_unet_mid_block_attentions_0_proj_in": lora_group(320, 320, 4, generator, alpha=4.0),
               "lora_unet_double_blocks_0_img_attn_qkv": lora_group(9, 3, 4, generator, alpha=4.0)}
    modules["lora_unet_mid_block_attentions_0_proj_in"]["diff"] = torch.zeros(320, 320)
    source = write_kohya(tmp_path / "flux.safetensors", modules)

    with pytest.raises(UnsupportedAdapterError) as error:
        formats.load(source)

    assert str(error.value) == (
        f"{source}: 4 tensor keys match no known key family: "
        "lora_unet_double_blocks_0_img_attn_qkv.alpha, "
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, "
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight, "
        f"lora_unet_mid_block_attentions_0_proj_in.diff; expected {kohya.EXPECTED_KEYS}"
    )


def test_language_model_export_refused(corpus):
    adapter = formats.load(corpus / "gemma3-270m-lora-qv")

    with pytest.raises(ExportError) as error:
        kohya.to_files(adapter)

    assert str(error.value) == (
        f"cannot write a kohya file: {len(adapter.modules)} modules have no kohya spelling "
        "(model.layers.0.self_attn.q_proj, model.layers.0.self_attn.v_proj, "
        "model.layers.1.self_attn.q_proj and 33 more); kohya files name only modules of the SD UNet "
        "and CLIP text encoders (unet.… or text_encoder….), so export this adapter as peft or lora"
    )


def test_diffusers_writer_needs_components(corpus):
    adapter = formats.load(corpus / "gemma3-270m-lora-qv")

    with pytest.raises(ExportError) as error:
        diffusers.to_files(adapter)

    assert str(error.value).startswith(
        "cannot write a diffusers file:\n  module 'model.layers.0.self_attn.q_proj' names no "
        "pipeline component (unet, text_encoder, text_encoder_2)"
    )


@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
        ("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj",
         "unet.up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj"),
        ("lora_unet_mid_block_resnets_1_time_emb_proj", "unet.mid_block.resnets.1.time_emb_proj"),
        ("lora_unet_time_embedding_linear_2", "unet.time_embedding.linear_2"),
        ("lora_unet_input_blocks_3_0_op", "unet.down_blocks.0.downsamplers.0.conv"),
        ("lora_unet_input_blocks_8_0_skip_connection", "unet.down_blocks.2.resnets.1.conv_shortcut"),
        ("lora_unet_middle_block_2_out_layers_3", "unet.mid_block.resnets.1.conv2"),
        ("lora_unet_output_blocks_5_1_proj_out", "unet.up_blocks.1.attentions.2.proj_out"),
        ("lora_te_text_model_encoder_layers_11_self_attn_out_proj",
         "text_encoder.text_model.encoder.layers.11.self_attn.out_proj"),
    ],
)
def test_kohya_names_round_trip(key, canonical):
    name, naming = sd_naming.kohya_to_canonical(key)

    assert name == canonical
    assert sd_naming.canonical_to_kohya(name, naming, "lora_te", frozenset({0, 1})) == key


def test_cli_exports_each_format(corpus, store_home, tmp_path):
    source = kohya_from_corpus(corpus, tmp_path / "style.safetensors")
    runner = CliRunner()
    added = runner.invoke(main, ["--home", str(store_home), "add", str(source), "--name", "style"])
    assert added.exit_code == 0, added.output

    for fmt, written_name in (("kohya", "lora.safetensors"), ("diffusers", "pytorch_lora_weights.safetensors"),
                              ("lycoris", "lycoris.safetensors")):
        folder = tmp_path / fmt
        folder.mkdir()
        result = runner.invoke(main, ["--home", str(store_home), "export", "style", "-o", str(folder),
                                      "--format", fmt])
        assert result.exit_code == 0, result.output
        assert result.output == f"{folder / written_name}\n"
        assert formats.load(folder / written_name).modules.keys() == formats.load(source).modules.keys()
    assert (tmp_path / "kohya" / "lora.safetensors").read_bytes() == source.read_bytes()
