"""Composed SD adapters load into a real diffusers UNet, built from a config, with exact weights.

A kohya file and a diffusers file are composed with weights. The result, exported in each
Stable Diffusion format, is loaded by diffusers itself into a tiny UNet2DConditionModel and
fused. Every adapted weight must then equal base + Σ wᵢ ΔWᵢ computed from the input files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapterhub.compose.options import ComposeOptions
from adapterhub.library import Library
from tests.adapterhub.formats.sd_builders import kohya_delta, lora_group, write_kohya

diffusers = pytest.importorskip("diffusers")

UNET_CONFIG = {
    "block_out_channels": (32, 64),
    "cross_attention_dim": 32,
    "layers_per_block": 1,
    "sample_size": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 8,
}
# Attention projections, a feed-forward layer, 3×3 and 1×1 convolutions, a transformer
# projection and a time-embedding projection.
MODULES = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.0.attentions.0.proj_in",
    "down_blocks.0.resnets.0.conv1",
    "up_blocks.0.resnets.0.conv_shortcut",
    "mid_block.resnets.0.time_emb_proj",
)
WEIGHTS = (1.0, 0.5)


def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**UNET_CONFIG)


def _layers(unet) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}


def _shape(layer: torch.nn.Module) -> tuple[int, int, tuple[int, int] | None]:
    if isinstance(layer, torch.nn.Conv2d):
        return layer.out_channels, layer.in_channels, tuple(layer.kernel_size)
    return layer.out_features, layer.in_features, None


def _inputs(folder: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """Write a kohya file (rank 4, α 2) and a diffusers file (rank 2, no config, so scale 1)."""
    layers = _layers(_unet())
    generator = torch.Generator().manual_seed(21)
    kohya_modules, diffusers_tensors, deltas = {}, {}, {}
    for name in MODULES:
        out_features, in_features, kernel = _shape(layers[name])
        group = lora_group(out_features, in_features, 4, generator, alpha=2.0, kernel=kernel)
        kohya_modules["lora_unet_" + name.replace(".", "_")] = group
        pair = lora_group(out_features, in_features, 2, generator, kernel=kernel)
        diffusers_tensors[f"unet.{name}.lora_A.weight"] = pair["lora_down.weight"]
        diffusers_tensors[f"unet.{name}.lora_B.weight"] = pair["lora_up.weight"]
        deltas[name] = WEIGHTS[0] * kohya_delta(group) + WEIGHTS[1] * kohya_delta(pair)
    kohya_path = write_kohya(folder / "style.safetensors", kohya_modules)
    diffusers_path = folder / "pytorch_lora_weights.safetensors"
    save_file(diffusers_tensors, str(diffusers_path), metadata={"format": "pt"})
    return kohya_path, diffusers_path, deltas


def _load_kohya_file(unet, path: Path) -> None:
    pipeline = diffusers.StableDiffusionPipeline
    state_dict, network_alphas = pipeline.lora_state_dict(str(path))[:2]
    pipeline.load_lora_into_unet(state_dict, network_alphas, unet=unet, adapter_name="composed")


def _load_diffusers_file(unet, path: Path) -> None:
    unet.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="unet",
                           adapter_name="composed")


LOADERS = {"kohya": _load_kohya_file, "lycoris": _load_kohya_file, "diffusers": _load_diffusers_file}


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-inputs")
    kohya_path, diffusers_path, deltas = _inputs(folder)
    library = Library.open(folder / "store")
    library.compose([str(kohya_path), str(diffusers_path)], ComposeOptions(weights=WEIGHTS),
                    name="merged")
    return library, deltas


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_composed_adapter_fuses_exactly(composed, fmt, tmp_path):
    library, deltas = composed
    (path,) = library.export("merged", tmp_path / f"merged-{fmt}.safetensors", fmt=fmt)
    unet = _unet()
    base = {name: layer.weight.detach().clone() for name, layer in _layers(unet).items()}

    LOADERS[fmt](unet, path)
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()

    fused = _layers(unet)
    for name, weight in base.items():
        expected = weight.double() + deltas[name].reshape(weight.shape) if name in deltas else weight.double()
        error = float((fused[name].weight.detach().double() - expected).abs().max())
        assert error <= 1e-6 * max(1.0, float(expected.abs().max())), name


def test_inputs_compose_by_canonical_name(composed):
    library, _ = composed

    metadata = library.show("merged")["metadata"]

    assert metadata["module_count"] == len(MODULES)
    assert metadata["module_ranks"] == [6]
    assert metadata["components"] == ["unet"]
