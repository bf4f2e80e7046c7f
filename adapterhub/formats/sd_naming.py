"""Canonical module names of Stable Diffusion adapters, and the spellings that map to them.

A module's canonical name is its diffusers module path prefixed by the pipeline component
that owns it: ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` or
``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``. Every Stable Diffusion format
reads into these names, so the same module spelled by kohya, diffusers or PEFT is one module
for composition.

kohya and A1111 files spell a module as ``lora_unet_`` plus the path with ``_`` for ``.``.
That is ambiguous (``to_q`` and ``transformer_blocks`` contain ``_`` themselves), so names
are split into words and rejoined with the vocabulary of module names below, then checked
against the module grammar of the diffusers UNet and the CLIP text encoder. SDXL files from
kohya's sd-scripts spell the UNet with the original (LDM) block names ``input_blocks``,
``middle_block`` and ``output_blocks``; :func:`ldm_to_diffusers` and
:func:`diffusers_to_ldm` translate them, assuming two layers per block as every SD 1.x, 2.x
and SDXL UNet has.
"""

from __future__ import annotations

import re

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
COMPONENTS = (UNET, TEXT_ENCODER, TEXT_ENCODER_2)

# Multi-word module names, longest first, used to rejoin the words of a kohya name.
_VOCABULARY = sorted(
    {
        # diffusers UNet2DConditionModel
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
        "to_out", "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in",
        "conv_out", "conv_norm_out", "time_embedding", "linear_1", "linear_2",
        "add_embedding", "class_embedding", "add_k_proj", "add_v_proj",
        # the original (LDM) UNet of sd-scripts' SDXL files
        "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb",
        "in_layers", "out_layers", "emb_layers", "skip_connection",
        # transformers CLIPTextModel and CLIPTextModelWithProjection
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
        "text_projection", "final_layer_norm", "layer_norm1", "layer_norm2",
        "token_embedding", "position_embedding",
    },
    key=lambda token: -token.count("_"),
)
_LONGEST_TOKEN_WORDS = max(token.count("_") for token in _VOCABULARY) + 1

_UNET_MODULE = re.compile(
    r"conv_in|conv_out|conv_norm_out"
    r"|(?:time_embedding|add_embedding|class_embedding)\.linear_[12]"
    r"|(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\."
    r"(?:resnets\.\d+\.(?:conv1|conv2|conv_shortcut|time_emb_proj|norm1|norm2)"
    r"|attentions\.\d+\.(?:proj_in|proj_out|norm"
    r"|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)"
    r"|ff\.net\.0\.proj|ff\.net\.2|norm[123]))"
    r"|downsamplers\.0\.conv|upsamplers\.0\.conv)"
)
_TEXT_ENCODER_MODULE = re.compile(
    r"text_model\.encoder\.layers\.\d+\."
    r"(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12]|layer_norm[12])"
    r"|text_model\.final_layer_norm|text_model\.embeddings\.(?:token|position)_embedding"
    r"|text_projection"
)

# kohya's prefix of each component; lora_te1 and lora_te2 are SDXL's two text encoders.
KOHYA_PREFIXES = {
    "lora_unet": UNET, "lora_te": TEXT_ENCODER, "lora_te1": TEXT_ENCODER,
    "lora_te2": TEXT_ENCODER_2,
}

# The two UNet namings of kohya files: diffusers paths, or the original LDM block names.
DIFFUSERS_NAMING = "diffusers"
LDM_NAMING = "ldm"


def is_unet_module(path: str) -> bool:
    """Return whether ``path`` (without component) is a module of a diffusers SD UNet."""
    return _UNET_MODULE.fullmatch(path) is not None


def is_text_encoder_module(path: str) -> bool:
    """Return whether ``path`` (without component) is a module of a CLIP text encoder."""
    return _TEXT_ENCODER_MODULE.fullmatch(path) is not None


def split_component(name: str) -> tuple[str | None, str]:
    """Split a canonical name into its component and the module path inside it."""
    head, _, rest = name.partition(".")
    if head in COMPONENTS and rest:
        return head, rest
    return None, name


_CONV_3X3 = re.compile(
    r"conv_in|conv_out|(?:down_blocks|up_blocks)\.\d+\.(?:downsamplers|upsamplers)\.0\.conv"
    r"|(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.resnets\.\d+\.conv[12]"
)


def conv_kernel_size(name: str) -> int | None:
    """Return the kernel size of a UNet convolution named canonically, or None if not a conv.

    Files that store a convolution's update flattened (LyCORIS without Tucker cores) do not
    record its kernel; the SD UNet's module names do. proj_in and proj_out are 1×1 convs in
    SD 1.x but linear layers later, so they are left out.
    """
    component, path = split_component(name)
    if component != UNET:
        return None
    if _CONV_3X3.fullmatch(path):
        return 3
    return 1 if path.endswith(".conv_shortcut") else None


def is_valid_module(component: str, path: str) -> bool:
    """Return whether ``path`` is a module that ``component`` has."""
    if component == UNET:
        return is_unet_module(path)
    return is_text_encoder_module(path)


def join_words(underscored: str) -> str:
    """Turn a kohya module spelling (``down_blocks_0_attentions_0_proj_in``) into a dotted path.

    Words are rejoined greedily with the longest multi-word module name that fits, so the
    result is right for the names in the vocabulary and must be checked with
    :func:`is_valid_module` (or the LDM translation) before it is trusted.
    """
    words = underscored.split("_")
    tokens = []
    position = 0
    while position < len(words):
        for size in range(min(_LONGEST_TOKEN_WORDS, len(words) - position), 0, -1):
            candidate = "_".join(words[position:position + size])
            if size == 1 or candidate in _VOCABULARY:
                tokens.append(candidate)
                position += size
                break
    return ".".join(tokens)


def kohya_to_canonical(module_key: str) -> tuple[str, str] | None:
    """Return ``(canonical name, UNet naming)`` for a kohya module key, or None if unknown.

    ``module_key`` is the part of a tensor key before ``.lora_down.weight`` (say
    ``lora_unet_input_blocks_4_1_proj_in``). The naming is :data:`LDM_NAMING` when the key
    uses the original UNet block names, else :data:`DIFFUSERS_NAMING`.
    """
    for prefix in sorted(KOHYA_PREFIXES, key=len, reverse=True):
        if not module_key.startswith(prefix + "_"):
            continue
        component = KOHYA_PREFIXES[prefix]
        path = join_words(module_key[len(prefix) + 1:])
        naming = DIFFUSERS_NAMING
        if component == UNET and not is_unet_module(path):
            translated = ldm_to_diffusers(path)
            if translated is None:
                return None
            path, naming = translated, LDM_NAMING
        if not is_valid_module(component, path):
            return None
        return f"{component}.{path}", naming
    return None


def canonical_to_kohya(
    name: str, naming: str, text_encoder_prefix: str, attention_up_blocks: frozenset[int]
) -> str | None:
    """Return the kohya module key of a canonical name, or None when kohya cannot spell it.

    ``text_encoder_prefix`` is ``lora_te`` (SD 1.x and 2.x) or ``lora_te1`` (SDXL).
    ``attention_up_blocks`` lists the UNet up blocks that have attentions, which decides the
    LDM index of their upsampler. The result always reads back to ``name``.
    """
    component, path = split_component(name)
    if component is None or not is_valid_module(component, path):
        return None
    if component == UNET:
        prefix = "lora_unet"
        if naming == LDM_NAMING:
            path = diffusers_to_ldm(path, attention_up_blocks)
    else:
        prefix = text_encoder_prefix if component == TEXT_ENCODER else "lora_te2"
    key = f"{prefix}_{path.replace('.', '_')}"
    parsed = kohya_to_canonical(key)
    return key if parsed is not None and parsed[0] == name else None


_RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
_RESNET_DIFFUSERS_TO_LDM = {value: key for key, value in _RESNET_LDM_TO_DIFFUSERS.items()}
_TOP_LDM_TO_DIFFUSERS = {
    "input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out",
}
_TOP_DIFFUSERS_TO_LDM = {value: key for key, value in _TOP_LDM_TO_DIFFUSERS.items()}
_LDM_BLOCK = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)|middle_block\.(\d)\.(.+)")
_DIFFUSERS_BLOCK = re.compile(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)"
    r"|mid_block\.(resnets|attentions)\.(\d+)\.(.+)"
    r"|(down_blocks|up_blocks)\.(\d+)\.(?:downsamplers|upsamplers)\.0\.conv"
)


def ldm_to_diffusers(path: str) -> str | None:
    """Translate an LDM UNet module path into the diffusers one, or None if it is not one."""
    if path in _TOP_LDM_TO_DIFFUSERS:
        return _TOP_LDM_TO_DIFFUSERS[path]
    match = _LDM_BLOCK.fullmatch(path)
    if match is None:
        return None
    if match[5] is not None:
        middle = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}.get(match[5])
        return _inner_to_diffusers(f"mid_block.{middle}", match[6]) if middle else None

    kind, block, part, inner = match[1], int(match[2]), match[3], match[4]
    if kind == "input_blocks":
        if block % 3 == 0:
            return f"down_blocks.{block // 3 - 1}.downsamplers.0.conv" if inner == "op" and part == "0" else None
        layer = f"down_blocks.{(block - 1) // 3}.{{}}.{(block - 1) % 3}"
    else:
        if part in ("1", "2") and inner == "conv":
            return f"up_blocks.{block // 3}.upsamplers.0.conv"
        layer = f"up_blocks.{block // 3}.{{}}.{block % 3}"
    container = {"0": "resnets", "1": "attentions"}.get(part)
    return _inner_to_diffusers(layer.format(container), inner) if container else None


def _inner_to_diffusers(layer: str, inner: str) -> str:
    if ".resnets." in layer:
        inner = _RESNET_LDM_TO_DIFFUSERS.get(inner, inner)
    return f"{layer}.{inner}"


def diffusers_to_ldm(path: str, attention_up_blocks: frozenset[int]) -> str:
    """Translate a diffusers UNet module path into the LDM one (inverse of ldm_to_diffusers)."""
    if path in _TOP_DIFFUSERS_TO_LDM:
        return _TOP_DIFFUSERS_TO_LDM[path]
    match = _DIFFUSERS_BLOCK.fullmatch(path)
    if match is None:
        return path
    if match[9] is not None:
        block = int(match[10])
        if match[9] == "down_blocks":
            return f"input_blocks.{3 * (block + 1)}.0.op"
        return f"output_blocks.{3 * block + 2}.{2 if block in attention_up_blocks else 1}.conv"
    if match[6] is not None:
        middle = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}[f"{match[6]}.{match[7]}"]
        return f"middle_block.{middle}.{_inner_to_ldm(match[6], match[8])}"

    kind, block, container, layer = match[1], int(match[2]), match[3], int(match[4])
    part = "0" if container == "resnets" else "1"
    index = 3 * block + layer + 1 if kind == "down_blocks" else 3 * block + layer
    ldm_kind = "input_blocks" if kind == "down_blocks" else "output_blocks"
    return f"{ldm_kind}.{index}.{part}.{_inner_to_ldm(container, match[5])}"


def _inner_to_ldm(container: str, inner: str) -> str:
    if container == "resnets":
        return _RESNET_DIFFUSERS_TO_LDM.get(inner, inner)
    return inner


def unprefixed_component(names: list[str], base_model_class: str | None) -> str | None:
    """Return the component of adapters whose module names carry none, or None.

    A PEFT adapter trained on a bare diffusers UNet names modules ``down_blocks.0…``. It is
    recognised by the model class PEFT records in ``auto_mapping``, or else by every module
    name being a UNet module. Language-model adapters match neither and keep their names.
    """
    if not names or any(split_component(name)[0] for name in names):
        return None
    if base_model_class == "UNet2DConditionModel" or all(is_unet_module(n) for n in names):
        return UNET
    return None
