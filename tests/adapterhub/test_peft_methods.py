"""The composition methods against PEFT itself, on tiny models built here from configs.

PEFT 0.21's add_weighted_adapter is the reference for linear and for the *_svd combination
types. Composed adapters (rank_pattern, kept heads) must load in PEFT without key warnings, an
exported stack loads in PEFT through the snippet in docs/composition.md, and adapters that are
not LoRA are stored but not composed.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapterhub import formats  # noqa: E402
from adapterhub.compose.engine import ComposeInput, compose  # noqa: E402
from adapterhub.compose.options import ComposeOptions  # noqa: E402
from adapterhub.errors import UnsupportedCompositionError  # noqa: E402
from adapterhub.formats import peft as peft_format  # noqa: E402
from adapterhub.library import Library  # noqa: E402
from tests.adapterhub.test_peft_agreement import _tiny_llama  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "composition.md"


def _save(folder, seed, config, model=None):
    """Save a train-free PEFT adapter of ``config`` on the tiny Llama (random factors)."""
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(model if model is not None else _tiny_llama(), config)
    peft_model.save_pretrained(str(folder))
    return folder


def _lora(folder, seed, **config):
    return _save(folder, seed, peft.LoraConfig(init_lora_weights=False, **config))


def _write(adapter, folder):
    folder.mkdir(parents=True)
    for name, data in peft_format.to_files(adapter).items():
        (folder / name).write_bytes(data)
    return folder


def _inputs(*folders):
    return [ComposeInput(formats.load(folder), folder.name, f"{index:064x}")
            for index, folder in enumerate(folders)]


def _load_quietly(base, folder, caplog):
    """Load an adapter with PEFT, failing on any warning about missing or unexpected keys."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    key_problems = [m for m in messages if "key" in m.lower()
                    and ("missing" in m.lower() or "unexpected" in m.lower())]
    assert not key_problems
    return model


def _logits(model):
    tokens = torch.arange(12).reshape(2, 6) % 100
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _peft_merged(folders, weights, combination_type, **arguments):
    """PEFT's own add_weighted_adapter result, as the active adapter of a tiny Llama."""
    model = peft.PeftModel.from_pretrained(_tiny_llama(), str(folders[0]), adapter_name="a0")
    for index, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{index}")
    names = [f"a{index}" for index in range(len(folders))]
    model.add_weighted_adapter(names, list(weights), "merged", combination_type=combination_type,
                               **arguments)
    model.set_adapter("merged")
    return model.eval()


@pytest.fixture
def llama_pair(tmp_path):
    first = _lora(tmp_path / "first", 1, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    second = _lora(tmp_path / "second", 2, r=4, lora_alpha=16, target_modules=["q_proj", "o_proj", "up_proj"])
    return first, second


@pytest.mark.parametrize("weights", [(1.0, 0.6), (0.8, -0.5)])
def test_linear_matches_peft(llama_pair, tmp_path, caplog, weights):
    adapter = compose(_inputs(*llama_pair), ComposeOptions(method="linear", weights=weights)).adapter
    ours = _logits(_load_quietly(_tiny_llama(), _write(adapter, tmp_path / "ours"), caplog))

    expected = _logits(_peft_merged(llama_pair, weights, "linear"))

    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method, extra, peft_type, peft_arguments", [
    ("ties", {"density": 0.5}, "ties_svd", {"density": 0.5}),
    ("ties", {"density": 0.3, "majority_sign": "frequency"}, "ties_svd",
     {"density": 0.3, "majority_sign_method": "frequency"}),
    ("magnitude_prune", {"density": 0.4}, "magnitude_prune_svd", {"density": 0.4}),
    # DARE's random drop differs from PEFT's, so compare it where nothing is dropped.
    ("dare_linear", {"density": 1.0}, "dare_linear_svd", {"density": 1.0}),
    ("dare_ties", {"density": 1.0}, "dare_ties_svd", {"density": 1.0}),
])
def test_dense_methods_match_peft_svd_types(llama_pair, tmp_path, caplog, method, extra, peft_type,
                                            peft_arguments):
    weights = (1.0, -0.7)
    options = ComposeOptions(method=method, weights=weights, rank=4, **extra)
    adapter = compose(_inputs(*llama_pair), options).adapter
    ours = _logits(_load_quietly(_tiny_llama(), _write(adapter, tmp_path / "ours"), caplog))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that density 1 prunes nothing
        expected = _logits(_peft_merged(llama_pair, weights, peft_type, svd_rank=4, **peft_arguments))

    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-4)


def test_svd_energy_reloads_in_peft(llama_pair, tmp_path, caplog):
    inputs = _inputs(*llama_pair)
    adapter = compose(inputs, ComposeOptions(method="svd", weights=(1.0, 0.5), energy=0.8)).adapter
    model = _load_quietly(_tiny_llama(), _write(adapter, tmp_path / "ours"), caplog)
    ranks = {name: module.rank for name, module in adapter.modules.items()}

    merged = model.merge_and_unload()
    base = dict(_tiny_llama().named_parameters())

    assert len(set(ranks.values())) > 1
    assert adapter.config["rank_pattern"]
    for name, module in adapter.modules.items():
        actual = merged.get_parameter(f"{name}.weight").double() - base[f"{name}.weight"].double()
        exact = sum(w * item.adapter.modules[name].delta(torch.float64)
                    for item, w in zip(inputs, (1.0, 0.5)) if name in item.adapter.modules)
        u, s, vh = torch.linalg.svd(exact)
        best = u[:, :ranks[name]] @ torch.diag(s[:ranks[name]]) @ vh[:ranks[name]]
        assert torch.allclose(actual, module.delta(), atol=1e-6), name
        assert torch.allclose(actual, best, atol=1e-5), name


def _doc_snippet(function_name):
    """Return the first Python code block of docs/composition.md that defines ``function_name``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return next(block for block in blocks if f"def {function_name}(" in block)


def test_exported_stack_loads_in_peft(tmp_path, caplog):
    first = _lora(tmp_path / "task", 1, r=4, lora_alpha=8, use_rslora=True,
                  target_modules=["q_proj", "k_proj", "v_proj"])
    second = _lora(tmp_path / "style", 2, r=6, lora_alpha=6, target_modules=["q_proj", "o_proj", "up_proj"])
    library = Library.open(tmp_path / "store")

    library.stack([str(first), str(second)], weights=(1.0, -0.4), name="both")
    library.export("both", tmp_path / "exported")
    namespace: dict = {}
    exec(_doc_snippet("load_stack"), namespace)
    stacked = _logits(namespace["load_stack"](_tiny_llama(), tmp_path / "exported").eval())

    materialized = library.stack([str(first), str(second)], weights=(1.0, -0.4), name="mat",
                                 materialize=True)
    library.export(materialized.artifact_id, tmp_path / "mat")
    expected = _logits(_load_quietly(_tiny_llama(), tmp_path / "mat", caplog))
    base = _logits(_tiny_llama())

    assert torch.allclose(stacked, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, base, atol=1e-3)


def _tiny_distilbert(num_labels):
    """DistilBERT with the corpus adapters' shapes (dim 768, 6 layers) and little else."""
    config = transformers.DistilBertConfig(vocab_size=100, dim=768, n_layers=6, n_heads=12, hidden_dim=32,
                                           max_position_embeddings=64, num_labels=num_labels)
    torch.manual_seed(0)
    return transformers.DistilBertForSequenceClassification(config).eval()


def test_keep_head_result_loads_in_peft(corpus, tmp_path, caplog):
    inputs = _inputs(corpus / "distilbert-lora-emotion", corpus / "distilbert-lora-imdb")

    adapter = compose(inputs, ComposeOptions(weights=(1.0, 0.5), keep_head="distilbert-lora-emotion")).adapter
    model = _load_quietly(_tiny_distilbert(6), _write(adapter, tmp_path / "ours"), caplog)

    head = model.base_model.model.classifier.modules_to_save["default"]
    expected = inputs[0].adapter.tensors["base_model.model.classifier.weight"]
    assert torch.equal(head.weight, expected)
    with torch.no_grad():
        logits = model(input_ids=torch.arange(10).reshape(2, 5)).logits
    assert logits.shape == (2, 6)


@pytest.mark.parametrize("kind", ["ia3", "prompt_tuning"])
def test_non_lora_adapters_store_but_do_not_compose(tmp_path, kind):
    if kind == "ia3":
        config = peft.IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                                feedforward_modules=["down_proj"])
        reason = ("ia3 is an adapter of type IA3: it rescales activations element-wise "
                  "(W·diag(l)), a multiplicative change, not an added low-rank update")
    else:
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
        reason = ("prompt_tuning is an adapter of type PROMPT_TUNING: it trains virtual input "
                  "tokens and changes no weight")
    folder = _save(tmp_path / kind, 3, config)
    lora = _lora(tmp_path / "lora", 4, r=4, lora_alpha=8, target_modules=["q_proj"])
    library = Library.open(tmp_path / "store")

    added = library.add(folder, name=kind)
    with pytest.raises(UnsupportedCompositionError) as error:
        compose(_inputs(lora, folder), ComposeOptions())

    assert added.created
    assert library.show(kind)["metadata"]["peft_type"] == config.peft_type.value
    assert str(error.value) == f"cannot compose: {reason}. Only plain LoRA, AdaLoRA, LoHa and LoKr compose."
