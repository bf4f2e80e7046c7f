"""The composition engine against float64 references computed from the definitions."""

from __future__ import annotations

import re

import pytest
import torch

from adapterhub import formats
from adapterhub.compose.engine import ComposeInput, compose, plan_modules
from adapterhub.compose.execution import build_jobs, pack, to_host, unpack
from adapterhub.compose.methods import Settings, Truncation, combine_svd, combine_svd_group
from adapterhub.compose.options import ComposeOptions, ModuleWeight, parse_module_weight
from adapterhub.errors import (
    BaseModelMismatchError,
    HeadConflictError,
    InvalidOptionError,
    ShapeMismatchError,
    UnsupportedCompositionError,
)
from tests.adapterhub.builders import LORA_DEFAULTS, synthetic_adapter, write_peft_folder


def _inputs(*paths):
    return [ComposeInput(formats.load(path), path.name, f"{index:064x}")
            for index, path in enumerate(paths)]


def _reference_sum(inputs, weights):
    """Σ w_i ΔW_i per module in float64, taking absent modules as zero."""
    total = {}
    for item, weight in zip(inputs, weights):
        for name, module in item.adapter.modules.items():
            total[name] = total.get(name, 0) + weight * module.delta(torch.float64)
    return total


def _relative_error(actual, expected):
    return (torch.linalg.norm(actual - expected) / torch.linalg.norm(expected)).item()


def _best_rank(delta, rank):
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]


@pytest.fixture
def gpt2_pair(corpus):
    return _inputs(corpus / "gpt2-lora-tigrinya-causal", corpus / "gpt2-lora-demo-causal")


def test_cat_equals_weighted_sum(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(method="cat", weights=(1.0, 0.5)))
    expected = _reference_sum(gpt2_pair, (1.0, 0.5))
    composed = result.adapter.modules

    assert sorted(composed) == sorted(expected)
    assert list(composed["transformer.h.0.mlp.c_proj"].lora_A.shape) == [8, 3072]
    assert list(composed["transformer.h.0.attn.c_attn"].lora_A.shape) == [16, 768]
    for name, delta in expected.items():
        assert _relative_error(composed[name].delta(), delta) <= 1e-6, name


def test_svd_equals_best_rank_approximation(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(method="svd", weights=(1.0, 0.5), rank=8))
    expected = _reference_sum(gpt2_pair, (1.0, 0.5))

    # A dense float64 SVD per module is slow, so check the first and the last block.
    checked = [name for name in expected if ".h.0." in name or ".h.11." in name]
    assert len(checked) == 6
    for name in checked:
        delta = expected[name]
        module = result.adapter.modules[name]
        assert module.rank == 8, name
        assert _relative_error(module.delta(), _best_rank(delta, 8)) <= 1e-5, name


def test_svd_records_retained_energy(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(method="svd", weights=(1.0, 0.5), rank=8))
    expected = _reference_sum(gpt2_pair, (1.0, 0.5))

    reports = result.lineage["modules"]
    name = "transformer.h.0.attn.c_attn"
    s = torch.linalg.svdvals(expected[name])
    assert reports[name]["retained_energy"] == pytest.approx(((s[:8] ** 2).sum() / (s ** 2).sum()).item(), abs=1e-6)
    # c_proj comes from one rank-8 adapter, so rank 8 keeps all of it.
    assert reports["transformer.h.0.mlp.c_proj"]["retained_energy"] == pytest.approx(1.0)


def test_svd_energy_writes_rank_pattern(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(method="svd", weights=(1.0, 0.5), energy=0.9))
    config = result.adapter.config
    ranks = {name: report["rank"] for name, report in result.lineage["modules"].items()}

    assert config["r"] == max(ranks.values())
    for name, rank in ranks.items():
        assert result.adapter.modules[name].rank == rank
        assert result.lineage["modules"][name]["retained_energy"] >= 0.9 - 1e-6
    assert config["rank_pattern"] == {n: r for n, r in ranks.items() if r != config["r"]}
    assert config["alpha_pattern"] == config["rank_pattern"]


def test_lineage_names_parents_and_weights(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(method="cat", weights=(1.0, -0.5)))

    assert result.lineage["method"] == "cat"
    assert result.lineage["parents"] == [
        {"id": f"{0:064x}", "label": "gpt2-lora-tigrinya-causal", "weight": 1.0},
        {"id": f"{1:064x}", "label": "gpt2-lora-demo-causal", "weight": -0.5},
    ]
    assert result.adapter.lineage == result.lineage


def test_negative_weight_subtracts(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(weights=(1.0, -1.0)))
    expected = _reference_sum(gpt2_pair, (1.0, -1.0))

    for name, delta in expected.items():
        assert _relative_error(result.adapter.modules[name].delta(), delta) <= 1e-6, name


def test_cat_has_no_cross_terms(tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (12, 10, 4)}, seed=1)
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (12, 10, 4)}, seed=2)
    inputs = _inputs(first, second)

    delta = compose(inputs, ComposeOptions(weights=(0.7, 0.3))).adapter.modules["q_proj"].delta()
    a1, b1 = inputs[0].adapter.modules["q_proj"].factors()
    a2, b2 = inputs[1].adapter.modules["q_proj"].factors()
    cross = (b1.double() @ a2.double() + b2.double() @ a1.double()) * 2.0
    expected = _reference_sum(inputs, (0.7, 0.3))["q_proj"]

    assert _relative_error(delta, expected) <= 1e-6
    assert _relative_error(delta, expected + 0.1 * cross) > 1e-2


# Every method that returns a single adapter's own update when it is composed alone with weight
# 1: the element-wise methods only at density 1, and the truncating ones at a rank at or above
# the adapter's.
IDENTITY_METHODS = [
    ("cat", {}),
    ("svd", {"rank": 64}),
    ("linear", {}),
    ("ties", {"rank": 64, "density": 1.0}),
    ("dare_linear", {"rank": 64, "density": 1.0}),
    ("dare_ties", {"rank": 64, "density": 1.0}),
    ("magnitude_prune", {"rank": 64, "density": 1.0}),
]


def _conv_and_embedding_adapter(folder):
    """An adapter with a 3×3 conv module and an embedding module, laid out as PEFT saves them."""
    generator = torch.Generator().manual_seed(4)
    tensors = {
        "base_model.model.conv.lora_A.weight": torch.randn(4, 6, 3, 3, generator=generator),
        "base_model.model.conv.lora_B.weight": torch.randn(5, 4, 1, 1, generator=generator),
        "base_model.model.embed.lora_embedding_A": torch.randn(4, 30, generator=generator),
        "base_model.model.embed.lora_embedding_B": torch.randn(16, 4, generator=generator),
    }
    config = {**LORA_DEFAULTS, "target_modules": ["conv", "embed"]}
    return write_peft_folder(folder, config, tensors)


@pytest.mark.parametrize("variant", [
    {"use_rslora": True, "r": 16, "lora_alpha": 8},
    {"r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 8}, "alpha_pattern": {"v_proj": 32}},
    {"r": 4, "lora_alpha": 16, "fan_in_fan_out": True},
    {"r": 4, "lora_alpha": 8, "dtype": torch.float16},
    "conv and embedding",
])
def test_single_adapter_keeps_its_update(tmp_path, variant):
    if variant == "conv and embedding":
        inputs = _inputs(_conv_and_embedding_adapter(tmp_path / "one"))
    else:
        rank = variant.get("r", 4)
        modules = {"layers.0.q_proj": (24, 16, rank),
                   "layers.0.v_proj": (8, 16, 8 if "rank_pattern" in variant else rank)}
        inputs = _inputs(synthetic_adapter(tmp_path / "one", modules, seed=3, **variant))

    for method, extra in IDENTITY_METHODS:
        result = compose(inputs, ComposeOptions(method=method, **extra))
        for name, module in inputs[0].adapter.modules.items():
            composed = result.adapter.modules[name]
            tolerance = 1e-3 if module.lora_A.dtype == torch.float16 else 1e-6
            assert composed.lora_A.dtype == module.lora_A.dtype
            assert composed.lora_A.shape[1:] == module.lora_A.shape[1:], (method, name)
            assert _relative_error(composed.delta(), module.delta()) <= tolerance, (method, name)


def test_dtype_option_overrides_output(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(weights=(1.0, 0.5), dtype="bfloat16"))

    assert {t.dtype for t in result.adapter.tensors.values()} == {torch.bfloat16}


def test_float16_input_writes_float16(corpus):
    inputs = _inputs(corpus / "opencalm-1b-lora-r1-fp16")

    result = compose(inputs, ComposeOptions())

    assert {t.dtype for t in result.adapter.tensors.values()} == {torch.float16}


def test_shape_mismatch_names_module(tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (8, 8, 2)}, r=2)
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (8, 16, 2)}, r=2)

    with pytest.raises(ShapeMismatchError) as error:
        compose(_inputs(first, second), ComposeOptions())

    assert str(error.value) == (
        "the same module has different weight shapes, so the adapters belong to different "
        "models: module 'q_proj': a [8, 8], b [8, 16]"
    )


def test_base_mismatch_rejected(corpus):
    inputs = _inputs(corpus / "llama32-1b-lora-qv", corpus / "gemma3-270m-lora-qv")

    with pytest.raises(BaseModelMismatchError) as error:
        compose(inputs, ComposeOptions())

    assert str(error.value) == (
        "the adapters were trained on different base models: llama32-1b-lora-qv "
        "(meta-llama/Llama-3.2-1B), gemma3-270m-lora-qv (google/gemma-3-270m-it); compose "
        "adapters of one base model, or pass --allow-base-mismatch if the models share their "
        "architecture and you accept the risk"
    )


def test_base_mismatch_override_still_checks_shapes(corpus):
    inputs = _inputs(corpus / "llama32-1b-lora-qv", corpus / "gemma3-270m-lora-qv")

    with pytest.raises(ShapeMismatchError):
        compose(inputs, ComposeOptions(allow_base_mismatch=True))


def test_base_override_composes(tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (8, 8, 4)}, base_model_name_or_path="x/one")
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (8, 8, 4)}, base_model_name_or_path="x/two")

    result = compose(_inputs(first, second), ComposeOptions(allow_base_mismatch=True))

    assert result.adapter.modules["q_proj"].rank == 8


def test_hub_namespace_counts_as_same_base(corpus):
    inputs = _inputs(corpus / "distilgpt2-lora-fifo-false", corpus / "distilgpt2-lora-r16")

    result = compose(inputs, ComposeOptions(weights=(1.0, 1.0)))
    expected = _reference_sum(inputs, (1.0, 1.0))

    assert result.adapter.config["fan_in_fan_out"] is True
    for name, delta in expected.items():
        assert _relative_error(result.adapter.modules[name].delta(), delta) <= 1e-6


def test_dora_rejected(tmp_path):
    folder = synthetic_adapter(tmp_path / "dora", {"q_proj": (8, 8, 4)}, use_dora=True)
    plain = synthetic_adapter(tmp_path / "plain", {"q_proj": (8, 8, 4)})

    with pytest.raises(UnsupportedCompositionError) as error:
        compose(_inputs(plain, folder), ComposeOptions())

    assert str(error.value) == (
        "cannot compose: dora uses DoRA: its magnitude vector rescales the whole weight, so the "
        "update is not B·A and cannot be summed. Only plain LoRA, AdaLoRA, LoHa and LoKr "
        "compose."
    )


def test_head_conflict_needs_keep_head(corpus):
    inputs = _inputs(corpus / "distilbert-lora-emotion", corpus / "distilbert-lora-imdb")

    with pytest.raises(HeadConflictError) as error:
        compose(inputs, ComposeOptions())

    assert str(error.value) == (
        "the adapters save different modules_to_save heads: classifier (distilbert-lora-emotion "
        "[6, 768], distilbert-lora-imdb [2, 768]), pre_classifier (distilbert-lora-emotion "
        "[768, 768], distilbert-lora-imdb [768, 768]); heads are whole weights and cannot be "
        "summed, so choose one with --keep-head distilbert-lora-emotion"
    )


def test_keep_head_picks_one_adapter(corpus):
    inputs = _inputs(corpus / "distilbert-lora-emotion", corpus / "distilbert-lora-imdb")

    result = compose(inputs, ComposeOptions(keep_head="distilbert-lora-imdb"))

    key = "base_model.model.classifier.weight"
    assert torch.equal(result.adapter.tensors[key], inputs[1].adapter.tensors[key])
    assert result.adapter.config["modules_to_save"] == ["pre_classifier", "classifier", "score"]


def test_wrong_weight_count_rejected(gpt2_pair):
    with pytest.raises(InvalidOptionError) as error:
        compose(gpt2_pair, ComposeOptions(weights=(1.0,)))

    assert str(error.value) == (
        "1 weight given for 2 adapters; pass one weight per adapter, e.g. --weights 1.0,1.0"
    )


@pytest.mark.parametrize("options, message", [
    ({"method": "svdd"}, "unknown method 'svdd' (did you mean 'svd'?); choose one of: cat, svd, "
                         "linear, ties, dare_linear, dare_ties, magnitude_prune"),
    ({"method": "svd"}, "method 'svd' needs exactly one of --rank or --energy"),
    ({"method": "cat", "rank": 4}, "method 'cat' does not truncate; drop --rank and --energy"),
    ({"method": "svd", "rank": 0}, "rank 0 is invalid; expected a positive integer"),
    ({"method": "svd", "energy": 1.5}, "energy 1.5 is invalid; expected a number in (0, 1]"),
    ({"dtype": "float8"}, "dtype 'float8' is invalid; choose one of: float32, float16, bfloat16, float64"),
    ({"method": "ties", "rank": 4},
     "method 'ties' needs --density (the share of each update's entries to keep, in (0, 1])"),
    ({"method": "cat", "density": 0.5}, "method 'cat' does not use --density; drop it"),
    ({"method": "svd", "rank": 4, "seed": 1}, "method 'svd' does not use --seed; drop it"),
    ({"method": "ties", "rank": 4, "density": 0.5, "seed": 1}, "method 'ties' does not use --seed; drop it"),
    ({"method": "dare_linear", "rank": 4, "density": 0.5, "majority_sign": "total"},
     "method 'dare_linear' does not use --majority-sign; drop it"),
    ({"method": "ties", "rank": 4, "density": 0}, "density 0 is invalid; expected a number in (0, 1]"),
    ({"method": "ties", "rank": 4, "density": 1.5}, "density 1.5 is invalid; expected a number in (0, 1]"),
    ({"method": "ties", "rank": 4, "density": 0.5, "majority_sign": "mean"},
     "majority sign method 'mean' is invalid; choose one of: total, frequency"),
    ({"method": "dare_linear", "rank": 4, "density": 0.5, "seed": -1},
     "seed -1 is invalid; expected a non-negative integer"),
    ({"module_weights": (("style", "(", 1.0),)},
     "module weight pattern '(' is not a valid regular expression (missing ), unterminated "
     "subpattern at position 0)"),
    ({"module_weights": (("style", ".*", float("nan")),)},
     "module weight nan for '.*' must be a finite number"),
    ({"method": "ties", "density": 0.5},
     "method 'ties' needs exactly one of --rank or --energy"),
])
def test_invalid_options_rejected(options, message):
    with pytest.raises(InvalidOptionError) as error:
        ComposeOptions(**options)

    assert str(error.value) == message


def test_adalora_composes_exactly(corpus, tmp_path):
    inputs = _inputs(corpus / "bert-tiny-adalora-emot")

    result = compose(inputs, ComposeOptions(weights=(2.0,)))
    expected = _reference_sum(inputs, (2.0,))

    assert result.adapter.peft_type == "LORA"
    for name, delta in expected.items():
        assert _relative_error(result.adapter.modules[name].delta(), delta) <= 1e-6


def test_method_defaults_recorded():
    options = ComposeOptions(method="dare_ties", rank=4, density=0.5)

    assert options.seed == 0
    assert options.majority_sign == "total"
    assert options.parameters() == {"method": "dare_ties", "rank": 4, "density": 0.5,
                                    "majority_sign": "total", "seed": 0}


def test_adalora_composes_with_lora(corpus, tmp_path):
    adalora = formats.load(corpus / "bert-tiny-adalora-emot")
    shapes = {name: (module.out_features, module.in_features, 4) for name, module in adalora.modules.items()}
    lora = synthetic_adapter(tmp_path / "lora", shapes, seed=8, target_modules=adalora.config["target_modules"],
                             base_model_name_or_path=adalora.base_model)
    inputs = _inputs(corpus / "bert-tiny-adalora-emot", lora)
    expected = _reference_sum(inputs, (1.0, -0.5))

    for method, extra in (("cat", {}), ("svd", {"rank": 64})):
        result = compose(inputs, ComposeOptions(method=method, weights=(1.0, -0.5), **extra))
        assert sorted(result.adapter.modules) == sorted(expected)
        for name, delta in expected.items():
            assert _relative_error(result.adapter.modules[name].delta(), delta) <= 1e-6, (method, name)


def _reference_module_weights(inputs, weights, rules):
    """Σ w_i(m) ΔW_i for rules (input index, regex, weight), the last matching rule winning."""
    total = {}
    for index, (item, weight) in enumerate(zip(inputs, weights)):
        for name, module in item.adapter.modules.items():
            chosen = weight
            for rule_index, pattern, rule_weight in rules:
                if rule_index == index and re.fullmatch(pattern, name):
                    chosen = rule_weight
            total[name] = total.get(name, 0) + chosen * module.delta(torch.float64)
    return total


def test_module_weights_match_reference(gpt2_pair):
    rules = (
        ModuleWeight("gpt2-lora-tigrinya-causal", r".*\.attn\..*", 2.0),
        ModuleWeight("gpt2-lora-tigrinya-causal", r"transformer\.h\.0\.attn\.c_attn", 0.1),
        ModuleWeight("2", r"transformer\.h\.(8|9|10|11)\..*", -0.2),
    )
    expected = _reference_module_weights(gpt2_pair, (1.0, 0.5), [
        (0, r".*\.attn\..*", 2.0), (0, r"transformer\.h\.0\.attn\.c_attn", 0.1),
        (1, r"transformer\.h\.(8|9|10|11)\..*", -0.2),
    ])

    result = compose(gpt2_pair, ComposeOptions(weights=(1.0, 0.5), module_weights=rules))

    for name, delta in expected.items():
        assert _relative_error(result.adapter.modules[name].delta(), delta) <= 1e-6, name
    assert result.lineage["parameters"]["module_weights"][2] == {
        "adapter": "2", "pattern": r"transformer\.h\.(8|9|10|11)\..*", "weight": -0.2
    }


def test_module_weights_reach_dense_methods(tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (12, 10, 3), "v_proj": (12, 10, 3)}, seed=1, r=3)
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (12, 10, 3), "v_proj": (12, 10, 3)}, seed=2, r=3)
    inputs = _inputs(first, second)
    rules = (("b", "v_proj", 0.0),)

    result = compose(inputs, ComposeOptions(method="magnitude_prune", density=1.0, rank=64,
                                            module_weights=rules, dtype="float64"))
    expected = _reference_module_weights(inputs, (1.0, 1.0), [(1, "v_proj", 0.0)])

    for name, delta in expected.items():
        assert _relative_error(result.adapter.modules[name].delta(), delta) <= 1e-6, name


def test_module_weight_unknown_adapter(gpt2_pair):
    with pytest.raises(InvalidOptionError) as error:
        compose(gpt2_pair, ComposeOptions(module_weights=(("style", ".*", 0.3),)))

    assert str(error.value) == (
        "--module-weight 'style' names no input; use one of: gpt2-lora-tigrinya-causal, "
        "gpt2-lora-demo-causal or a position from 1 to 2"
    )


def test_module_weight_pattern_must_match(gpt2_pair):
    with pytest.raises(InvalidOptionError) as error:
        compose(gpt2_pair, ComposeOptions(module_weights=(("2", "c_attn", 0.3),)))

    assert str(error.value) == (
        "module weight pattern 'c_attn' for gpt2-lora-demo-causal matches none of its 12 modules "
        "such as 'transformer.h.0.attn.c_attn'; the pattern must match the whole module name, "
        "e.g. '.*self_attn.*' rather than 'self_attn'"
    )


@pytest.mark.parametrize("text, labels, expected", [
    ("style:.*self_attn.*=0.3", ("task", "style"), ModuleWeight("style", ".*self_attn.*", 0.3)),
    ("style:v2:.*=0.5", ("task", "style:v2"), ModuleWeight("style:v2", ".*", 0.5)),
    ("2:(?:a|b)=c=-1", (), ModuleWeight("2", "(?:a|b)=c", -1.0)),
])
def test_parse_module_weight(text, labels, expected):
    assert parse_module_weight(text, labels) == expected


@pytest.mark.parametrize("text, message", [
    ("style:.*", "module weight 'style:.*' has no '=WEIGHT' at the end; write e.g. style:.*self_attn.*=0.3"),
    ("style:.*=high", "module weight 'style:.*=high': 'high' after the last '=' is not a number; "
                      "write e.g. style:.*self_attn.*=0.3"),
    (".*=0.3", "module weight '.*=0.3' needs an adapter and a pattern before '='; "
               "write e.g. style:.*self_attn.*=0.3"),
])
def test_parse_module_weight_rejects(text, message):
    with pytest.raises(InvalidOptionError) as error:
        parse_module_weight(text, ("style",))

    assert str(error.value) == message


def test_batched_svd_equals_per_module(gpt2_pair):
    plan = plan_modules(gpt2_pair)
    jobs = build_jobs(plan, {name: [1.0, 0.5][: len(m)] for name, m in plan.items()},
                      torch.device("cpu"), torch.float64)
    group = [job for job in jobs if job.name.endswith("attn.c_attn")]

    for truncation in (Truncation(rank=8), Truncation(energy=0.95)):
        settings = Settings(truncation)
        batched = combine_svd_group(group, settings)
        for job, result in zip(group, batched):
            single = combine_svd(job, settings)
            assert result.rank == single.rank, job.name
            assert result.retained_energy == pytest.approx(single.retained_energy, abs=1e-12)
            assert _relative_error(result.lora_B @ result.lora_A, single.lora_B @ single.lora_A) <= 1e-10


def test_progress_counts_modules_on_one_thread(gpt2_pair):
    threads_before = torch.get_num_threads()
    calls = []

    def progress(done, total):
        assert total == 36
        calls.append((done, torch.get_num_threads()))

    compose(gpt2_pair, ComposeOptions(method="svd", rank=8, device="cpu"), progress=progress)

    assert calls[-1][0] == 36
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert {threads for _, threads in calls} == {1}
    assert torch.get_num_threads() == threads_before


def test_pack_round_trip():
    tensors = [torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.float16), torch.zeros(0, 5)]

    flat = pack(tensors, torch.float64)
    views = unpack(flat, [tensor.shape for tensor in tensors])

    assert flat.dtype == torch.float64
    assert flat.numel() == 10
    assert [view.shape for view in views] == [tensor.shape for tensor in tensors]
    assert all(torch.equal(view, tensor.double()) for view, tensor in zip(views, tensors))
    assert to_host(views)[0] is views[0]


def test_energy_one_keeps_the_exact_sum(gpt2_pair):
    result = compose(gpt2_pair, ComposeOptions(method="svd", weights=(1.0, 0.5), energy=1.0))
    expected = _reference_sum(gpt2_pair, (1.0, 0.5))

    name = "transformer.h.0.attn.c_attn"
    assert result.adapter.modules[name].rank == 16
    assert _relative_error(result.adapter.modules[name].delta(), expected[name]) <= 1e-6
