"""Write the two example adapters in this folder: ``task`` and ``style``.

Both are PEFT LoRA adapters for the shapes of HuggingFaceTB/SmolLM2-135M (hidden size 576,
30 layers, 3 key/value heads of 64), with seeded random factors in place of trained ones, so
they exercise every code path without shipping anyone's weights. Run it again and the files
come out byte for byte the same:

    python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapterhub.adapter import LoraAdapter
from adapterhub.formats import peft

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M"
LAYERS = 30
HIDDEN = 576
KV_WIDTH = 192  # 3 key/value heads of 64
OUT_FEATURES = {"q_proj": HIDDEN, "k_proj": KV_WIDTH, "v_proj": KV_WIDTH, "o_proj": HIDDEN}

EXAMPLES = {
    "task": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "seed": 1},
    "style": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj"], "seed": 2},
}


def lora_config(r: int, lora_alpha: int, target_modules: list[str]) -> dict:
    """Return a LoRA config with the fields PEFT writes."""
    return {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": BASE_MODEL,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
        "lora_alpha": lora_alpha, "lora_dropout": 0.05, "modules_to_save": None,
        "peft_type": "LORA", "r": r, "rank_pattern": {}, "revision": None,
        "target_modules": target_modules, "task_type": "CAUSAL_LM", "use_dora": False,
        "use_rslora": False,
    }


def lora_tensors(r: int, target_modules: list[str], seed: int) -> dict[str, torch.Tensor]:
    """Return seeded factors at the scale of a trained adapter, in float16."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for module in target_modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = torch.randn(r, HIDDEN, generator=generator) / HIDDEN**0.5
            b = torch.randn(OUT_FEATURES[module], r, generator=generator) * 0.02
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.float16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.float16)
    return tensors


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, spec in EXAMPLES.items():
        config = lora_config(spec["r"], spec["lora_alpha"], spec["target_modules"])
        tensors = lora_tensors(spec["r"], spec["target_modules"], spec["seed"])
        folder = here / name
        folder.mkdir(exist_ok=True)
        for filename, data in peft.to_files(LoraAdapter(config, tensors, {"format": "pt"})).items():
            (folder / filename).write_bytes(data)
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
