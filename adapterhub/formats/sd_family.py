"""The Stable Diffusion base family of an adapter, read from the shapes of its modules.

Adapter files for Stable Diffusion name no base model, but their shapes tell the family
apart: the UNet's cross-attention takes the text encoder's hidden states, 768 wide in
SD 1.x, 1024 in SD 2.x, 2048 in SDXL (its two text encoders concatenated) and 1280 in the
SDXL refiner. Without a cross-attention module, the text encoders and the UNet's structure
decide where they can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from adapterhub.formats.sd_naming import TEXT_ENCODER, TEXT_ENCODER_2, UNET, split_component

if TYPE_CHECKING:
    from adapterhub.adapter import LoraModule


@dataclass(frozen=True)
class Family:
    """A base model family: its identifier in metadata, its name in messages, its shapes."""

    id: str
    title: str
    cross_attention: int
    # UNet up blocks that have attentions; their upsampler sits one place later in LDM names.
    attention_up_blocks: frozenset[int]


FAMILIES = {
    family.id: family
    for family in (
        Family("sd1", "Stable Diffusion 1.x", 768, frozenset({1, 2, 3})),
        Family("sd2", "Stable Diffusion 2.x", 1024, frozenset({1, 2, 3})),
        Family("sdxl", "SDXL", 2048, frozenset({0, 1})),
        Family("sdxl-refiner", "SDXL refiner", 1280, frozenset({0, 1, 2})),
    )
}
_BY_CROSS_ATTENTION = {family.cross_attention: family.id for family in FAMILIES.values()}
_CROSS_ATTENTION_INPUT = re.compile(r".*\.attn2\.(?:to_k|to_v)")
# Hidden width of the first text encoder: CLIP ViT-L in SD 1.x and SDXL, OpenCLIP ViT-H in SD 2.x.
_BY_TEXT_WIDTH = {768: "sd1", 1024: "sd2"}
# Input width of SDXL's add_embedding: pooled text (1280) plus six 256-wide time embeddings.
_BY_ADD_EMBEDDING = {2816: "sdxl", 2560: "sdxl-refiner"}


def describe_family(family_id: str) -> str:
    """Return the family's name for messages, with its cross-attention width."""
    family = FAMILIES[family_id]
    return f"{family.title}, cross-attention {family.cross_attention}"


def base_family(modules: Mapping[str, LoraModule]) -> str | None:
    """Return the family id of an adapter with these canonical modules, or None if unknown."""
    by_component: dict[str, dict[str, LoraModule]] = {}
    for name, module in modules.items():
        component, path = split_component(name)
        if component is not None:
            by_component.setdefault(component, {})[path] = module
    if not by_component:
        return None

    unet = by_component.get(UNET, {})
    for clue in (_cross_attention_family(unet), _add_embedding_family(unet)):
        if clue is not None:
            return clue
    if TEXT_ENCODER_2 in by_component:
        return "sdxl" if TEXT_ENCODER in by_component else None
    return _text_encoder_family(by_component.get(TEXT_ENCODER, {})) or _structure_family(unet)


def _cross_attention_family(unet: dict[str, LoraModule]) -> str | None:
    for path, module in unet.items():
        if _CROSS_ATTENTION_INPUT.fullmatch(path):
            return _BY_CROSS_ATTENTION.get(module.in_features)
    return None


def _add_embedding_family(unet: dict[str, LoraModule]) -> str | None:
    module = unet.get("add_embedding.linear_1")
    return _BY_ADD_EMBEDDING.get(module.in_features) if module is not None else None


def _text_encoder_family(text_encoder: dict[str, LoraModule]) -> str | None:
    for path, module in text_encoder.items():
        if path.endswith("self_attn.q_proj"):
            return _BY_TEXT_WIDTH.get(module.in_features)
    return None


def _structure_family(unet: dict[str, LoraModule]) -> str | None:
    # SD 1.x projects into and out of its transformers with 1×1 convolutions, SD 2.x and
    # SDXL with linear layers. Only SD 1.x and 2.x have attentions in their first down block.
    first_block = [m for p, m in unet.items() if p.startswith("down_blocks.0.attentions.")]
    projections = [m for p, m in unet.items() if p.endswith((".proj_in", ".proj_out"))]
    if first_block and projections:
        return "sd1" if projections[0].lora_A.dim() > 2 else "sd2"
    return None
