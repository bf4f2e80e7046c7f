"""Each composition method against a float64 reference written here from its definition.

The references use numpy and follow the published definitions (TIES-Merging, Yadav et al.
2023; DARE, Yu et al. 2023) as PEFT applies them to dense updates, independently of
adapterhub.compose.elementwise. DARE's mask is rebuilt from the documented derivation of the
per-module seed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from adapterhub import formats
from adapterhub.adapter import LoraAdapter
from adapterhub.compose import elementwise
from adapterhub.compose.engine import ComposeInput, compose
from adapterhub.compose.options import ComposeOptions
from adapterhub.errors import ShapeMismatchError
from tests.adapterhub.builders import synthetic_adapter

F64 = torch.float64


def _inputs(*paths):
    return [ComposeInput(formats.load(path), path.name, f"{index:064x}")
            for index, path in enumerate(paths)]


def _relative_error(actual, expected):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def _trim(delta: np.ndarray, density: float) -> np.ndarray:
    """Keep the int(density · n) entries of largest magnitude (TIES "trim")."""
    if density >= 1:
        return delta.copy()
    count = int(density * delta.size)
    order = np.argsort(-np.abs(delta), axis=None, kind="stable")
    kept = np.zeros(delta.size, dtype=bool)
    kept[order[:count]] = True
    return np.where(kept.reshape(delta.shape), delta, 0.0)


def _elect_and_merge(pruned, weights, sign_method):
    """TIES "elect" and "disjoint merge": mean of the weighted entries that agree in sign."""
    stacked = np.stack(pruned)
    votes = stacked.sum(axis=0) if sign_method == "total" else np.sign(stacked).sum(axis=0)
    elected = np.where(votes >= 0, 1.0, -1.0)
    agree = np.sign(stacked) == elected
    weighted = stacked * np.asarray(weights).reshape(-1, 1, 1)
    return (weighted * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)


def reference_ties(deltas, weights, density, sign_method="total"):
    return _elect_and_merge([_trim(d, density) for d in deltas], weights, sign_method)


def reference_magnitude_prune(deltas, weights, density):
    return sum(w * _trim(d, density) for d, w in zip(deltas, weights))


def reference_masks(seed, module, shapes, density):
    """DARE's keep masks as documented: one generator per module, masks in input order."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
    return [(torch.rand(shape, generator=generator, dtype=F64) < density).numpy() for shape in shapes]


def reference_dare_linear(deltas, weights, density, masks):
    return sum(w * np.where(m, d / density, 0.0) for d, w, m in zip(deltas, weights, masks))


def reference_dare_ties(deltas, weights, density, masks, sign_method="total"):
    dropped = [np.where(m, d / density, 0.0) for d, m in zip(deltas, masks)]
    return _elect_and_merge(dropped, weights, sign_method)


def _subset(inputs, blocks):
    """The inputs restricted to the modules of the given GPT-2 blocks, to keep tests fast."""
    subset = []
    for item in inputs:
        tensors = {key: value for key, value in item.adapter.tensors.items()
                   if any(f".h.{block}." in key for block in blocks)}
        adapter = LoraAdapter(item.adapter.config, tensors, item.adapter.metadata)
        subset.append(ComposeInput(adapter, item.label, item.artifact_id))
    return subset


def _module_deltas(inputs, name):
    modules = [item.adapter.modules.get(name) for item in inputs]
    present = [index for index, module in enumerate(modules) if module is not None]
    return present, [modules[index].delta(F64) for index in present]


@pytest.fixture
def gpt2_pair(corpus):
    return _inputs(corpus / "gpt2-lora-tigrinya-causal", corpus / "gpt2-lora-demo-causal")


@pytest.mark.parametrize("density, sign_method", [(0.3, "total"), (0.7, "frequency"), (1.0, "total")])
def test_ties_step_matches_reference_gpt2(gpt2_pair, density, sign_method):
    weights = (1.0, -0.6)
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.5.mlp.c_proj"):
        present, deltas = _module_deltas(gpt2_pair, name)
        used = [weights[index] for index in present]

        merged = elementwise.ties(deltas, used, density, sign_method)
        expected = reference_ties([d.numpy() for d in deltas], used, density, sign_method)

        assert _relative_error(merged, expected) <= 1e-12, name


@pytest.mark.parametrize("density", [0.2, 0.9])
def test_magnitude_prune_step_matches_reference(gpt2_pair, density):
    present, deltas = _module_deltas(gpt2_pair, "transformer.h.3.attn.c_attn")

    merged = elementwise.magnitude_prune_merge(deltas, [0.8, 0.4], density)
    expected = reference_magnitude_prune([d.numpy() for d in deltas], [0.8, 0.4], density)

    assert _relative_error(merged, expected) <= 1e-12


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_step_matches_reference(gpt2_pair, method):
    name = "transformer.h.7.attn.c_attn"
    present, deltas = _module_deltas(gpt2_pair, name)
    masks = reference_masks(11, name, [d.shape for d in deltas], 0.4)
    generator = elementwise.module_generator(11, name, torch.device("cpu"))
    arrays = [d.numpy() for d in deltas]

    if method == "dare_linear":
        merged = elementwise.dare_linear(deltas, [1.0, 0.5], 0.4, generator)
        expected = reference_dare_linear(arrays, [1.0, 0.5], 0.4, masks)
    else:
        merged = elementwise.dare_ties(deltas, [1.0, 0.5], 0.4, "total", generator)
        expected = reference_dare_ties(arrays, [1.0, 0.5], 0.4, masks)

    assert _relative_error(merged, expected) <= 1e-12


def test_top_magnitude_mask_large_matrix():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(700, 600, generator=generator, dtype=F64)  # above the sampling size

    for count in (1, 12345, 210000, 419999):
        mask = elementwise.top_magnitude_mask(values, count)
        kept = values.abs()[mask]
        assert int(mask.sum()) == count
        assert float(kept.min()) >= float(values.abs()[~mask].max())


def test_top_magnitude_mask_ties_across_blocks():
    generator = torch.Generator().manual_seed(6)
    # Integer values repeat thousands of times, so the cut falls inside a run of equal magnitudes.
    values = torch.randint(-40, 41, (900, 700), generator=generator).double()
    count = 333333

    mask = elementwise.top_magnitude_mask(values, count)
    threshold = float(values.abs()[mask].min())
    tied = (values.abs() == threshold).reshape(-1)
    kept_tied = torch.nonzero(tied & mask.reshape(-1)).reshape(-1)
    dropped_tied = torch.nonzero(tied & ~mask.reshape(-1)).reshape(-1)

    assert int(mask.sum()) == count
    assert threshold > float(values.abs()[~mask].max()) - 1e-12
    assert len(kept_tied) > 0
    assert len(dropped_tied) > 0
    assert int(kept_tied.max()) < int(dropped_tied.min())
    assert torch.equal(elementwise.magnitude_prune(values, count / values.numel()),
                       torch.where(mask, values, 0.0))


def test_top_magnitude_mask_breaks_ties_in_order():
    values = torch.tensor([[3.0, -2.0, 2.0], [2.0, 1.0, -3.0]])

    mask = elementwise.top_magnitude_mask(values, 3)

    assert mask.tolist() == [[True, True, False], [False, False, True]]


def _synthetic_pair(tmp_path):
    """Two adapters with different ranks, scales and target sets, small enough for exact SVD."""
    first = synthetic_adapter(tmp_path / "first", {"q_proj": (12, 10, 3), "v_proj": (8, 10, 2)},
                              seed=1, r=3, lora_alpha=6, rank_pattern={"v_proj": 2})
    second = synthetic_adapter(tmp_path / "second", {"q_proj": (12, 10, 5), "o_proj": (10, 8, 5)},
                               seed=2, r=5, lora_alpha=5, use_rslora=True)
    return _inputs(first, second)


@pytest.mark.parametrize("method, extra", [
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.35, "majority_sign": "frequency"}),
    ("magnitude_prune", {"density": 0.6}),
    ("dare_linear", {"density": 0.5, "seed": 4}),
    ("dare_ties", {"density": 0.5, "seed": 4}),
])
def test_dense_methods_match_reference_synthetic(tmp_path, method, extra):
    inputs = _synthetic_pair(tmp_path)
    weights = (0.9, -0.4)

    result = compose(inputs, ComposeOptions(method=method, weights=weights, rank=64, dtype="float64", **extra))

    for name, module in result.adapter.modules.items():
        present, deltas = _module_deltas(inputs, name)
        arrays = [d.numpy() for d in deltas]
        used = [weights[index] for index in present]
        density, sign = extra["density"], extra.get("majority_sign", "total")
        if method == "ties":
            expected = reference_ties(arrays, used, density, sign)
        elif method == "magnitude_prune":
            expected = reference_magnitude_prune(arrays, used, density)
        else:
            masks = reference_masks(4, name, [d.shape for d in deltas], density)
            reference = reference_dare_linear if method == "dare_linear" else reference_dare_ties
            expected = reference(arrays, used, density, masks)
        assert _relative_error(module.delta(), expected) <= 1e-6, name
        assert result.lineage["modules"][name]["relative_error"] <= 1e-6


def test_dense_method_truncation_error_reported(gpt2_pair):
    gpt2_pair = _subset(gpt2_pair, (0, 9))
    result = compose(gpt2_pair, ComposeOptions(method="ties", weights=(1.0, 0.5), density=0.5, rank=8,
                                               dtype="float64"))

    for name in ("transformer.h.0.attn.c_attn", "transformer.h.9.mlp.c_proj"):
        present, deltas = _module_deltas(gpt2_pair, name)
        expected = reference_ties([d.numpy() for d in deltas], [(1.0, 0.5)[i] for i in present], 0.5)
        singular = np.linalg.svd(expected, compute_uv=False)
        optimal = float(np.sqrt((singular[8:] ** 2).sum() / (singular ** 2).sum()))
        module = result.adapter.modules[name]
        measured = _relative_error(module.delta(), expected)
        report = result.lineage["modules"][name]

        assert module.rank == 8
        assert report["relative_error"] == pytest.approx(measured, rel=1e-4)
        assert optimal <= measured <= optimal * 1.01, name
        assert report["retained_energy"] == pytest.approx(1 - measured ** 2, abs=2e-3)


def test_dense_method_energy_writes_rank_pattern(tmp_path):
    inputs = _synthetic_pair(tmp_path)

    result = compose(inputs, ComposeOptions(method="ties", density=0.5, energy=0.9))
    ranks = {name: report["rank"] for name, report in result.lineage["modules"].items()}

    for name, report in result.lineage["modules"].items():
        assert report["retained_energy"] >= 0.9 - 1e-6
    assert result.adapter.config["rank_pattern"] == {n: r for n, r in ranks.items()
                                                     if r != result.adapter.config["r"]}


def test_dare_same_seed_same_bytes(gpt2_pair):
    gpt2_pair = _subset(gpt2_pair, (0, 1))
    options = ComposeOptions(method="dare_ties", density=0.5, rank=8, seed=7)

    first = formats.get("peft").to_files(compose(gpt2_pair, options).adapter)
    second = formats.get("peft").to_files(compose(gpt2_pair, options).adapter)
    other = formats.get("peft").to_files(
        compose(gpt2_pair, ComposeOptions(method="dare_ties", density=0.5, rank=8, seed=8)).adapter
    )

    assert first == second
    assert first["adapter_model.safetensors"] != other["adapter_model.safetensors"]


def test_dare_seed_per_module_independent(tmp_path):
    inputs = _synthetic_pair(tmp_path)
    single = [ComposeInput(inputs[0].adapter, "first", inputs[0].artifact_id)]
    options = ComposeOptions(method="dare_linear", density=0.5, rank=64, seed=3, dtype="float64")

    both = compose(inputs, options).adapter.modules["v_proj"]
    alone = compose(single, options).adapter.modules["v_proj"]

    # v_proj is adapted by the first input only, so its mask cannot depend on the others.
    assert torch.equal(both.lora_A, alone.lora_A)
    assert torch.equal(both.lora_B, alone.lora_B)


def test_dare_keeps_density_on_average(tmp_path):
    folder = synthetic_adapter(tmp_path / "one", {"q_proj": (60, 50, 4)}, seed=9)
    delta = formats.load(folder).modules["q_proj"].delta(F64)
    merged = [elementwise.dare_linear([delta], [1.0], 0.3, elementwise.module_generator(seed, "q_proj", torch.device("cpu")))
              for seed in range(400)]

    kept = np.mean([float((m != 0).double().mean()) for m in merged])
    mean = torch.stack(merged).mean(dim=0)

    assert kept == pytest.approx(0.3, abs=0.01)
    # The rescaled drop is unbiased: the mean over seeds approaches ΔW.
    assert _relative_error(mean, delta) < 0.2


def test_linear_averages_factors(tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (12, 10, 4), "k_proj": (6, 10, 4)}, seed=1)
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (12, 10, 4)}, seed=2, lora_alpha=2)
    inputs = _inputs(first, second)
    weights = (0.7, -0.3)

    result = compose(inputs, ComposeOptions(method="linear", weights=weights, dtype="float64"))

    modules = [item.adapter.modules["q_proj"] for item in inputs]
    coefficients = [w * m.scale for w, m in zip(weights, modules)]
    a = sum(np.sign(c) * np.sqrt(abs(c)) * m.factors()[0].double().numpy() for c, m in zip(coefficients, modules))
    b = sum(np.sqrt(abs(c)) * m.factors()[1].double().numpy() for c, m in zip(coefficients, modules))
    weighted_sum = sum(w * m.delta(F64).numpy() for w, m in zip(weights, modules))
    composed = result.adapter.modules["q_proj"].delta().numpy()

    assert _relative_error(composed, b @ a) <= 1e-12
    assert _relative_error(composed, weighted_sum) > 0.1  # cross terms B_i A_j
    assert _relative_error(result.adapter.modules["k_proj"].delta(),
                           0.7 * inputs[0].adapter.modules["k_proj"].delta(F64)) <= 1e-12


def test_linear_rejects_unequal_ranks(tmp_path):
    first = synthetic_adapter(tmp_path / "a", {"q_proj": (12, 10, 4), "v_proj": (8, 10, 4)}, seed=1)
    second = synthetic_adapter(tmp_path / "b", {"q_proj": (12, 10, 2), "v_proj": (8, 10, 2)}, seed=2, r=2)

    with pytest.raises(ShapeMismatchError) as error:
        compose(_inputs(first, second), ComposeOptions(method="linear"))

    assert str(error.value) == (
        "method 'linear' averages the factors themselves, so every module needs one rank in all "
        "inputs, but these differ: 'q_proj' (4, 2); 'v_proj' (4, 2); use cat or svd, which sum "
        "the updates of any ranks"
    )


def test_linear_matches_reference_gpt2(gpt2_pair):
    weights = (1.0, -0.5)
    result = compose(gpt2_pair, ComposeOptions(method="linear", weights=weights, dtype="float64"))

    for name in ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"):
        present, _ = _module_deltas(gpt2_pair, name)
        modules = [gpt2_pair[index].adapter.modules[name] for index in present]
        coefficients = [weights[index] * module.scale for index, module in zip(present, modules)]
        a = sum(np.sign(c) * np.sqrt(abs(c)) * m.factors()[0].double().numpy() for c, m in zip(coefficients, modules))
        b = sum(np.sqrt(abs(c)) * m.factors()[1].double().numpy() for c, m in zip(coefficients, modules))
        assert _relative_error(result.adapter.modules[name].delta(), b @ a) <= 1e-12, name


@pytest.mark.parametrize("method, extra", [("cat", {}), ("svd", {"rank": 64})])
def test_sum_methods_match_reference_synthetic(tmp_path, method, extra):
    inputs = _synthetic_pair(tmp_path)
    weights = (0.9, -0.4)

    result = compose(inputs, ComposeOptions(method=method, weights=weights, **extra))

    assert sorted(result.adapter.modules) == ["o_proj", "q_proj", "v_proj"]
    for name, module in result.adapter.modules.items():
        present, deltas = _module_deltas(inputs, name)
        expected = sum(weights[index] * delta for index, delta in zip(present, deltas))
        assert _relative_error(module.delta(), expected) <= 1e-6, name
