"""Base model families from module shapes, and the refusal to compose across them."""

from __future__ import annotations

import pytest
import torch

from adapterhub import formats
from adapterhub.compose.engine import ComposeInput, compose
from adapterhub.compose.options import ComposeOptions
from adapterhub.errors import BaseModelMismatchError
from tests.adapterhub.formats.sd_builders import lora_group, write_kohya

CROSS_K = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"


def _adapter(tmp_path, modules: dict[str, tuple[int, int, tuple[int, int] | None]], name: str = "a"):
    generator = torch.Generator().manual_seed(len(name))
    groups = {key: lora_group(out, inp, 2, generator, alpha=2.0, kernel=kernel)
              for key, (out, inp, kernel) in modules.items()}
    return formats.load(write_kohya(tmp_path / f"{name}.safetensors", groups))


@pytest.mark.parametrize(
    ("modules", "family"),
    [
        ({CROSS_K: (1280, 768, None)}, "sd1"),
        ({CROSS_K: (1280, 1024, None)}, "sd2"),
        ({CROSS_K: (1280, 2048, None)}, "sdxl"),
        ({CROSS_K: (1536, 1280, None)}, "sdxl-refiner"),
        ({"lora_unet_label_emb_0_0": (1280, 2816, None)}, "sdxl"),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (1024, 1024, None)}, "sd2"),
        ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, None),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280, None)}, "sdxl"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in": (320, 320, (1, 1))}, "sd1"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in": (320, 320, None)}, "sd2"),
        ({"lora_unet_conv_in": (320, 4, (3, 3))}, None),
    ],
)
def test_family_from_shapes(tmp_path, modules, family):
    assert _adapter(tmp_path, modules).describe()["base_family"] == family


def test_compose_across_families_refused(tmp_path):
    sd1 = _adapter(tmp_path, {CROSS_K: (1280, 768, None)}, "sd1-style")
    sdxl = _adapter(tmp_path, {CROSS_K: (1280, 2048, None)}, "xl-style")

    with pytest.raises(BaseModelMismatchError) as error:
        compose([ComposeInput(sd1, "sd1-style", "a" * 64), ComposeInput(sdxl, "xl-style", "b" * 64)],
                ComposeOptions())

    assert str(error.value) == (
        "the adapters were made for different base model families: sd1-style (Stable Diffusion "
        "1.x, cross-attention 768), xl-style (SDXL, cross-attention 2048); compose adapters of "
        "one family"
    )


def test_same_family_composes(tmp_path):
    first = _adapter(tmp_path, {CROSS_K: (1280, 768, None)}, "first")
    second = _adapter(tmp_path, {"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, None)},
                      "second")

    result = compose([ComposeInput(first, "first", "a" * 64), ComposeInput(second, "second", "b" * 64)],
                     ComposeOptions())

    assert result.adapter.describe()["components"] == ["text_encoder", "unet"]
    assert result.adapter.describe()["base_family"] == "sd1"
