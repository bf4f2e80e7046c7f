"""Per-block weights of SD UNet adapters: input, middle and output blocks, in the API and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from adapterhub import formats
from adapterhub.cli import main
from adapterhub.compose.blocks import BlockWeight, parse_block_weight
from adapterhub.compose.engine import ComposeInput, compose
from adapterhub.compose.options import ComposeOptions, ModuleWeight
from adapterhub.errors import InvalidOptionError
from tests.adapterhub.formats.sd_builders import kohya_delta, lora_group, read_groups, write_kohya

# Canonical name → (kohya key, out, in, kernel).
MODULES = {
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q":
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", 640, 640, None),
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k":
        ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768, None),
    "unet.up_blocks.1.resnets.0.conv1":
        ("lora_unet_up_blocks_1_resnets_0_conv1", 128, 256, (3, 3)),
    "unet.conv_in": ("lora_unet_conv_in", 320, 4, (3, 3)),
    "text_encoder.text_model.encoder.layers.0.mlp.fc1":
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", 512, 768, None),
}
MULTIPLIERS = {"unet.down_blocks": 0.2, "unet.mid_block": 1.0, "unet.up_blocks": 0.6}


@pytest.fixture
def style_file(tmp_path):
    generator = torch.Generator().manual_seed(9)
    groups = {key: lora_group(out, inp, 2, generator, alpha=1.0, kernel=kernel)
              for key, out, inp, kernel in MODULES.values()}
    return write_kohya(tmp_path / "style.safetensors", groups)


def _expected(style_file, weight: float) -> dict[str, torch.Tensor]:
    groups = read_groups(style_file)
    expected = {}
    for name, (key, *_) in MODULES.items():
        multiplier = next((m for prefix, m in MULTIPLIERS.items() if name.startswith(prefix + ".")), 1.0)
        expected[name] = weight * multiplier * kohya_delta(groups[key])
    return expected


def test_block_weights_scale_each_block(style_file):
    style = formats.load(style_file)

    result = compose([ComposeInput(style, "style", "a" * 64)],
                     ComposeOptions(weights=(0.5,), block_weights=("style:0.2,1.0,0.6",), dtype="float64"))

    for name, expected in _expected(style_file, 0.5).items():
        assert torch.allclose(result.adapter.modules[name].delta(), expected, rtol=1e-12, atol=1e-15), name
    assert result.lineage["parameters"]["block_weights"] == [
        {"adapter": "style", "input": 0.2, "middle": 1.0, "output": 0.6}
    ]


def test_module_weight_wins_over_block(style_file):
    style = formats.load(style_file)
    name = "unet.up_blocks.1.resnets.0.conv1"

    result = compose([ComposeInput(style, "style", "a" * 64)], ComposeOptions(
        block_weights=(BlockWeight("style", 0.2, 1.0, 0.6),),
        module_weights=(ModuleWeight("style", r"unet\.up_blocks\.1\.resnets\..*", 2.0),), dtype="float64"))

    expected = 2.0 * kohya_delta(read_groups(style_file)[MODULES[name][0]])
    assert torch.allclose(result.adapter.modules[name].delta(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("style:0.2,1.0", ("block weights 'style:0.2,1.0' give 2 values; expected 3, one each for "
                           "the input, middle and output blocks; write e.g. style:0.2,1.0,0.6 "
                           "(input, middle, output blocks)")),
        ("0.2,1.0,0.6", ("block weights '0.2,1.0,0.6' name no adapter before ':'; write e.g. "
                         "style:0.2,1.0,0.6 (input, middle, output blocks)")),
        ("style:0.2,high,0.6", ("block weight 'high' in 'style:0.2,high,0.6' is not a number; "
                                "write e.g. style:0.2,1.0,0.6 (input, middle, output blocks)")),
    ],
)
def test_malformed_block_weights_rejected(text, message):
    with pytest.raises(InvalidOptionError) as error:
        parse_block_weight(text)

    assert str(error.value) == message


def test_tagged_reference_parses():
    assert parse_block_weight("style:v2:0.2,1,0.6") == BlockWeight("style:v2", 0.2, 1.0, 0.6)


def test_block_weights_need_unet_modules(corpus):
    adapter = formats.load(corpus / "gpt2-lora-demo-causal")

    with pytest.raises(InvalidOptionError) as error:
        compose([ComposeInput(adapter, "demo", "a" * 64)], ComposeOptions(block_weights=("demo:1,1,1",)))

    assert str(error.value) == (
        "--block-weights apply to Stable Diffusion UNet adapters, but demo has no module in the "
        "UNet's down_blocks, mid_block or up_blocks"
    )


def test_cli_block_weights(style_file, tmp_path):
    output = tmp_path / "merged"
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "store"), "compose", str(style_file),
                                       "--block-weights", f"{style_file}:0.2,1.0,0.6", "-o", str(output)])

    assert result.exit_code == 0, result.output
    merged = formats.load(output)
    lineage = json.loads(merged.metadata["adapterhub.lineage"])
    assert lineage["parameters"]["block_weights"] == [
        {"adapter": str(style_file), "input": 0.2, "middle": 1.0, "output": 0.6}
    ]
    for name, expected in _expected(style_file, 1.0).items():
        assert torch.allclose(merged.modules[name].delta(), expected, rtol=1e-5, atol=1e-9), name
