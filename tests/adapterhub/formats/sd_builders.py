"""Stable Diffusion LoRA files written for tests, without adapterhub's writers."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SD15_PREFIXED = "sd15-diffusers-unet-prefixed"


def write_kohya(path: Path, modules: dict[str, dict[str, torch.Tensor]],
                metadata: dict[str, str] | None = None) -> Path:
    """Write a kohya file from ``{kohya module key: {parameter: tensor}}``."""
    tensors = {f"{key}.{parameter}": tensor for key, group in modules.items()
               for parameter, tensor in group.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def lora_group(out_features: int, in_features: int, rank: int, generator: torch.Generator,
               alpha: float | None = None, kernel: tuple[int, int] | None = None,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random kohya factors of one module, with an ``.alpha`` unless ``alpha`` is None."""
    kernel_shape = tuple(kernel) if kernel else ()
    ones = (1, 1) if kernel else ()
    group = {
        "lora_down.weight": (0.1 * torch.randn(rank, in_features, *kernel_shape, generator=generator)).to(dtype),
        "lora_up.weight": (0.1 * torch.randn(out_features, rank, *ones, generator=generator)).to(dtype),
    }
    if alpha is not None:
        group["alpha"] = torch.tensor(alpha, dtype=dtype)
    return group


def kohya_from_corpus(corpus: Path, path: Path) -> Path:
    """Write a kohya file of the SD 1.5 corpus LoRA, with differing alphas and a conv module.

    The attention modules come from the diffusers file of the corpus, so the tensors are real.
    Their alphas cycle through 1, 2, 3 and 4 (rank 4). A 3×3 conv1 of the first resnet, of
    rank 8, is added, as kohya's LoCon training writes it.
    """
    source = load_file(str(corpus / SD15_PREFIXED / "pytorch_lora_weights.safetensors"))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    names = sorted({key.removesuffix(".lora.down.weight") for key in source if key.endswith(".lora.down.weight")})
    for index, name in enumerate(names):
        key = "lora_" + name.replace(".", "_")
        modules[key] = {
            "lora_down.weight": source[f"{name}.lora.down.weight"],
            "lora_up.weight": source[f"{name}.lora.up.weight"],
            "alpha": torch.tensor(float(1 + index % 4)),
        }
    generator = torch.Generator().manual_seed(7)
    modules["lora_unet_down_blocks_0_resnets_0_conv1"] = lora_group(320, 320, 8, generator, alpha=4.0,
                                                                     kernel=(3, 3))
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": "4",
                "ss_base_model_version": "sd_v1", "ss_output_name": "corpus-style"}
    return write_kohya(path, modules, metadata)


def kohya_delta(group: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return ΔW = (α / r) · up @ down of a kohya module, flattened to (out, in), in float64."""
    down = group["lora_down.weight"].double()
    up = group["lora_up.weight"].double()
    rank = down.shape[0]
    alpha = float(group["alpha"]) if "alpha" in group else rank
    return alpha / rank * (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1))


def read_groups(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read a kohya-keyed file back as ``{module key: {parameter: tensor}}``."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        module, _, parameter = key.partition(".")
        groups.setdefault(module, {})[parameter] = tensor
    return groups


def header_metadata(path: Path) -> dict[str, str]:
    """Return the safetensors ``__metadata__`` of a file."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def relative_error(first: torch.Tensor, second: torch.Tensor) -> float:
    """Return ‖first − second‖ / ‖second‖ in float64."""
    first, second = first.double(), second.double()
    return float(torch.linalg.norm(first - second) / torch.linalg.norm(second))
