"""Adapters written for tests: synthetic PEFT folders and adapters trained-free with PEFT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

LORA_DEFAULTS: dict[str, Any] = {
    "peft_type": "LORA",
    "base_model_name_or_path": "test/tiny-base",
    "task_type": "CAUSAL_LM",
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["q_proj", "v_proj"],
    "rank_pattern": {},
    "alpha_pattern": {},
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
}


def write_peft_folder(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a PEFT adapter folder the way PEFT lays it out, without adapterhub's writer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def lora_tensors(
    modules: dict[str, tuple[int, int, int]], seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random LoRA factors for ``{module name: (out, in, rank)}`` under PEFT's key names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features, rank) in modules.items():
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator).to(dtype)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator).to(dtype)
    return tensors


def synthetic_adapter(
    folder: Path, modules: dict[str, tuple[int, int, int]], seed: int = 0, **config: Any
) -> Path:
    """Write a synthetic LoRA adapter with random factors; ``config`` overrides the defaults."""
    dtype = config.pop("dtype", torch.float32)
    return write_peft_folder(folder, {**LORA_DEFAULTS, **config}, lora_tensors(modules, seed, dtype))
