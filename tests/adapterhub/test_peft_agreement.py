"""Composed adapters load in PEFT and agree with PEFT's own results, on tiny models built here."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapterhub import formats  # noqa: E402
from adapterhub.compose.engine import ComposeInput, compose  # noqa: E402
from adapterhub.compose.options import ComposeOptions  # noqa: E402
from adapterhub.formats import peft as peft_format  # noqa: E402


def _tiny_gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=100,
                                    bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def _tiny_llama():
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


MODELS = {"gpt2": _tiny_gpt2, "llama": _tiny_llama}
TARGETS = {
    "gpt2": (["c_attn", "c_proj"], ["c_attn"]),
    "llama": (["q_proj", "k_proj", "v_proj"], ["q_proj", "o_proj", "up_proj"]),
}


def _save_adapter(model_name, folder, seed, **config):
    """Train-free adapter: PEFT initialises A and B at random, then saves the folder."""
    torch.manual_seed(seed)
    lora = peft.LoraConfig(init_lora_weights=False, **config)
    model = peft.get_peft_model(MODELS[model_name](), lora)
    model.save_pretrained(str(folder))
    return folder


def _write(adapter, folder):
    folder.mkdir(parents=True)
    for name, data in peft_format.to_files(adapter).items():
        (folder / name).write_bytes(data)
    return folder


def _load_quietly(model_name, folder, caplog):
    """Load an adapter with PEFT, failing on any warning about missing or unexpected keys."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(MODELS[model_name](), str(folder)).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    key_problems = [m for m in messages if "key" in m.lower()
                    and ("missing" in m.lower() or "unexpected" in m.lower())]
    assert not key_problems
    return model


def _logits(model):
    tokens = torch.arange(12).reshape(2, 6) % 100
    with torch.no_grad():
        return model(input_ids=tokens).logits


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_cat_matches_peft_add_weighted_adapter(model_name, tmp_path, caplog):
    first_targets, second_targets = TARGETS[model_name]
    first = _save_adapter(model_name, tmp_path / "first", 1, r=4, lora_alpha=8, target_modules=first_targets)
    second = _save_adapter(model_name, tmp_path / "second", 2, r=4, lora_alpha=16, target_modules=second_targets)
    weights = (1.0, 0.6)

    inputs = [ComposeInput(formats.load(path), path.name, "0" * 64) for path in (first, second)]
    composed = _write(compose(inputs, ComposeOptions(weights=weights)).adapter, tmp_path / "ours")
    ours = _logits(_load_quietly(model_name, composed, caplog))

    reference = peft.PeftModel.from_pretrained(MODELS[model_name](), str(first), adapter_name="first")
    reference.load_adapter(str(second), adapter_name="second")
    reference.add_weighted_adapter(["first", "second"], list(weights), "merged", combination_type="cat")
    reference.set_adapter("merged")
    expected = _logits(reference.eval())

    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_rslora_alone_keeps_update(tmp_path, caplog):
    folder = _save_adapter("llama", tmp_path / "rs", 3, r=16, lora_alpha=8, use_rslora=True,
                           target_modules=["q_proj", "v_proj"])
    inputs = [ComposeInput(formats.load(folder), "rs", "0" * 64)]

    composed = _write(compose(inputs, ComposeOptions()).adapter, tmp_path / "ours")
    ours = _logits(_load_quietly("llama", composed, caplog))
    original = _logits(peft.PeftModel.from_pretrained(_tiny_llama(), str(folder)).eval())
    base = _logits(_tiny_llama())

    assert torch.allclose(ours, original, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(original, base, atol=1e-3)


def test_rank_pattern_adapters_reload(tmp_path, caplog):
    first = _save_adapter("llama", tmp_path / "first", 4, r=4, lora_alpha=8,
                          target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 8},
                          alpha_pattern={"q_proj": 2})
    second = _save_adapter("llama", tmp_path / "second", 5, r=2, lora_alpha=4,
                           target_modules=["q_proj", "o_proj"], rank_pattern={"layers.1.self_attn.o_proj": 6})
    inputs = [ComposeInput(formats.load(path), path.name, "0" * 64) for path in (first, second)]

    adapter = compose(inputs, ComposeOptions(weights=(1.0, -0.5))).adapter
    model = _load_quietly("llama", _write(adapter, tmp_path / "ours"), caplog)

    merged = model.merge_and_unload()
    base = dict(_tiny_llama().named_parameters())
    for name, module in adapter.modules.items():
        expected = sum(
            weight * item.adapter.modules[name].delta(torch.float64)
            for item, weight in zip(inputs, (1.0, -0.5)) if name in item.adapter.modules
        )
        actual = merged.get_parameter(f"{name}.weight").double() - base[f"{name}.weight"].double()
        assert torch.allclose(actual, expected, atol=1e-5), name
