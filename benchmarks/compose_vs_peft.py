"""Compose two rank-16 LoRA adapters of Llama-2-7B shape with PEFT and with adapterhub.

    python benchmarks/compose_vs_peft.py [--output benchmarks/results/compose_vs_peft.json]

Llama-2-7B shapes: hidden 4096, intermediate 11008, rank-16 adapters on q, k, v, o, gate, up and
down projections, weights 1.0 and 0.6, TIES at density 0.5. Every measurement runs in its own
subprocess, which reports the seconds of the measured step, the resident memory before it and
the peak during it (the kernel's VmHWM mark, reset just before the step), and its wall time.

1. Per decoder layer, PEFT 0.21's ``add_weighted_adapter`` (cat, svd, ties_svd) against
   adapterhub's cat, svd and ties on a LlamaForCausalLM of two decoder layers whose base
   weights are left uninitialized (``no_init_weights``), so only the adapters cost time.
   PEFT's svd and ties_svd run a dense SVD per module and take minutes per layer. So each is
   measured on one q_proj (4096 × 4096) and one down_proj (4096 × 11008) of layer 0, and
   estimated per layer as 4 · t(q) + 3 · t(down), because the four attention projections
   share q's shape and gate and up are down's transpose. adapterhub's figures come from all modules
   of both layers (cat and svd also from all 32 layers). Errors are relative Frobenius
   errors on layer 0's q_proj and down_proj against the exact weighted sum (svd) or the
   exact dense TIES merge (ties), both computed in float64.
2. End to end, ``adapterhub compose`` (a subprocess, interpreter start included) on a full
   32-layer pair written to disk, against the I/O floor: a subprocess that imports torch and
   safetensors, loads both files and writes a file of the result's size with fsync.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, INTERMEDIATE, LAYERS, RANK, ALPHA = 4096, 11008, 32, 16, 32
WEIGHTS = (1.0, 0.6)
DENSITY = 0.5
# Module name suffix -> (out, in) of the adapted weight.
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN), "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
PREFIX = "base_model.model.model.layers"


def write_pair(folder: Path, layers: range, suffixes: tuple[str, ...]) -> list[Path]:
    """Write two PEFT adapter folders with random factors; the same seeds give the same factors."""
    from safetensors.torch import save_file

    folders = []
    for index in range(2):
        generator = torch.Generator().manual_seed(1000 + index)
        tensors = {}
        for layer in range(LAYERS):
            for suffix, (out_features, in_features) in SHAPES.items():
                # Draw every module, kept or not, so a subset has the same factors as the full pair.
                a = torch.randn(RANK, in_features, generator=generator) / in_features ** 0.5
                b = torch.randn(out_features, RANK, generator=generator) * 0.01
                if layer in layers and suffix in suffixes:
                    tensors[f"{PREFIX}.{layer}.{suffix}.lora_A.weight"] = a
                    tensors[f"{PREFIX}.{layer}.{suffix}.lora_B.weight"] = b
        target = folder / f"adapter{index}"
        target.mkdir(parents=True, exist_ok=True)
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
            "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
            "use_dora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
            "target_modules": sorted({suffix.split(".")[1] for suffix in suffixes}),
            "layers_to_transform": list(layers), "layers_pattern": "layers", "inference_mode": True,
        }
        (target / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
        folders.append(target)
    return folders


def peak_rss_mib() -> float:
    """Return the peak resident memory of this process since start or since reset_peak()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so the next peak is that of one step (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def exact_sum(inputs, name: str) -> torch.Tensor:
    return sum(w * item.adapter.modules[name].delta(torch.float64) for item, w in zip(inputs, WEIGHTS))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(actual.double() - expected) / torch.linalg.norm(expected))


def load_inputs(folders):
    from adapterhub import formats
    from adapterhub.compose.engine import ComposeInput

    return [ComposeInput(formats.load(folder), folder.name, f"{i:064x}") for i, folder in enumerate(folders)]


def reference(inputs, name: str, method: str) -> torch.Tensor:
    """Return the exact float64 result before truncation: the weighted sum or the TIES merge."""
    from adapterhub.compose import elementwise

    if method == "ties":
        deltas = [item.adapter.modules[name].delta(torch.float64) for item in inputs]
        return elementwise.ties(deltas, WEIGHTS, DENSITY, "total")
    return exact_sum(inputs, name)


# The modules whose errors are compared, those PEFT's svd and ties_svd are measured on.
COMPARED = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


def child_ours(method: str, folders: list[Path], threads: int | None) -> dict:
    from adapterhub.compose.engine import compose
    from adapterhub.compose.lowrank import stack_factors, truncated_svd
    from adapterhub.compose.options import ComposeOptions

    if threads:
        torch.set_num_threads(threads)
    inputs = load_inputs(folders)
    extra = {"cat": {}, "svd": {"rank": RANK}, "ties": {"rank": RANK, "density": DENSITY}}[method]
    options = ComposeOptions(method=method, weights=WEIGHTS, device="cpu", **extra)
    before = current_rss_mib()
    reset_peak()
    start = time.perf_counter()
    result = compose(inputs, options)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()

    errors, to_truncation = {}, {}
    for name in COMPARED if method != "cat" and not threads else ():
        exact = reference(inputs, name, method)
        errors[name] = relative_error(result.adapter.modules[name].delta(), exact)
        if method == "svd":
            terms = [(m.factors()[0].double(), m.factors()[1].double(), w * m.scale)
                     for m, w in ((item.adapter.modules[name], w) for item, w in zip(inputs, WEIGHTS))]
            best = truncated_svd(*stack_factors(terms), rank=RANK)
            to_truncation[name] = relative_error(result.adapter.modules[name].delta(), best.B @ best.A)
    return {"seconds": seconds, "modules": len(result.adapter.modules), "rss_before_mib": before,
            "peak_rss_mib": peak, "errors": errors, "to_exact_truncation": to_truncation,
            "threads": torch.get_num_threads()}


def child_peft(method: str, folders: list[Path]) -> dict:
    import peft
    import transformers
    from transformers.initialization import no_init_weights

    from adapterhub.compose.lowrank import stack_factors, truncated_svd

    config = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=2,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=128)
    with no_init_weights():
        model = transformers.LlamaForCausalLM(config)
    model = peft.PeftModel.from_pretrained(model, str(folders[0]), adapter_name="a0")
    model.load_adapter(str(folders[1]), adapter_name="a1")
    arguments = {"ties_svd": {"density": DENSITY, "svd_rank": RANK}, "svd": {"svd_rank": RANK}, "cat": {}}[method]

    before = current_rss_mib()
    reset_peak()
    start = time.perf_counter()
    model.add_weighted_adapter(["a0", "a1"], list(WEIGHTS), "merged", combination_type=method, **arguments)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()

    inputs = load_inputs(folders)
    errors, to_truncation = {}, {}
    for name in sorted(inputs[0].adapter.modules) if method != "cat" else []:
        layer = model.base_model.model.get_submodule(name)
        exact = reference(inputs, name, "ties" if method == "ties_svd" else "svd")
        errors[name] = relative_error(layer.get_delta_weight("merged"), exact)
        if method == "svd":
            terms = [(m.factors()[0].double(), m.factors()[1].double(), w * m.scale)
                     for m, w in ((item.adapter.modules[name], w) for item, w in zip(inputs, WEIGHTS))]
            best = truncated_svd(*stack_factors(terms), rank=RANK)
            to_truncation[name] = relative_error(layer.get_delta_weight("merged"), best.B @ best.A)
    return {"seconds": seconds, "modules": len(inputs[0].adapter.modules), "rss_before_mib": before,
            "peak_rss_mib": peak, "errors": errors, "to_exact_truncation": to_truncation,
            "threads": torch.get_num_threads()}


def child_io_floor(folders: list[Path], output: Path, copies: int) -> dict:
    """Load both adapters and write the tensors of the first ``copies`` as one file, with fsync.

    One copy has the size of an ``svd`` result at the inputs' rank, two that of ``cat``.
    """
    from safetensors.torch import load_file, save_file

    loaded = [load_file(str(folder / "adapter_model.safetensors")) for folder in folders]
    tensors = {f"{index}.{key}": value for index in range(copies) for key, value in loaded[index].items()}
    save_file(tensors, str(output))
    with open(output, "rb+") as stream:
        os.fsync(stream.fileno())
    return {"peak_rss_mib": peak_rss_mib()}


def run_child(arguments: list[str]) -> dict:
    """Run this script as a child measurement and return its JSON report with its wall time."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"measurement {arguments} failed:\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = wall
    return report


def run_compose(arguments: list[str]) -> dict:
    """Run ``adapterhub compose`` in a subprocess; return its wall time and peak memory."""
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "seconds = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'code': code, 'wall_seconds': seconds, 'peak_rss_mib': peak}))\n"
    )
    command = [sys.executable, "-c", wrapper, sys.executable, "-m", "adapterhub", "compose", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if report["code"] != 0:
        raise RuntimeError(f"adapterhub compose {arguments} failed:\n{completed.stderr[-3000:]}")
    return report


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    import peft

    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1),
            "torch": torch.__version__, "peft": peft.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def measure(workdir: Path, output: Path) -> dict:
    every = tuple(SHAPES)
    two_layers = write_pair(workdir / "two", range(2), every)
    q_only = write_pair(workdir / "q", range(1), ("self_attn.q_proj",))
    down_only = write_pair(workdir / "down", range(1), ("mlp.down_proj",))
    full = write_pair(workdir / "full", range(LAYERS), every)
    folders = lambda pair: [str(folder) for folder in pair]  # noqa: E731
    floor_file = workdir / "floor.safetensors"

    results: dict = {"machine": machine(), "per_layer": {}, "end_to_end": {}}
    steps = [
        ("per_layer", "peft_cat", lambda: run_child(["--child", "peft", "cat", *folders(two_layers)])),
        ("per_layer", "ours_cat", lambda: run_child(["--child", "ours", "cat", *folders(two_layers)])),
        ("per_layer", "ours_cat_32", lambda: run_child(["--child", "ours", "cat", *folders(full)])),
        ("per_layer", "ours_svd", lambda: run_child(["--child", "ours", "svd", *folders(two_layers)])),
        ("per_layer", "ours_svd_32", lambda: run_child(["--child", "ours", "svd", *folders(full)])),
        ("per_layer", "ours_ties", lambda: run_child(["--child", "ours", "ties", *folders(two_layers)])),
        ("per_layer", "ours_ties_1thread",
         lambda: run_child(["--child", "ours", "ties", "--threads", "1", *folders(two_layers)])),
        ("per_layer", "peft_svd_q", lambda: run_child(["--child", "peft", "svd", *folders(q_only)])),
        ("per_layer", "peft_svd_down", lambda: run_child(["--child", "peft", "svd", *folders(down_only)])),
        ("per_layer", "peft_ties_svd_q", lambda: run_child(["--child", "peft", "ties_svd", *folders(q_only)])),
        ("per_layer", "peft_ties_svd_down",
         lambda: run_child(["--child", "peft", "ties_svd", *folders(down_only)])),
        ("end_to_end", "floor_svd", lambda: run_child(["--child", "floor", "1", str(floor_file), *folders(full)])),
        ("end_to_end", "compose_svd", lambda: run_compose(
            [*folders(full), "--weights", "1.0,0.6", "--method", "svd", "--rank", str(RANK), "-q",
             "--device", "cpu", "-o", str(workdir / "out-svd")])),
        ("end_to_end", "floor_cat", lambda: run_child(["--child", "floor", "2", str(floor_file), *folders(full)])),
        ("end_to_end", "compose_cat", lambda: run_compose(
            [*folders(full), "--weights", "1.0,0.6", "-q", "--device", "cpu", "-o", str(workdir / "out-cat")])),
    ]
    results["adapter_file_mib"] = (full[0] / "adapter_model.safetensors").stat().st_size / 2**20
    for section, name, step in steps:
        started = time.perf_counter()
        results[section][name] = step()
        print(f"{name}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        # Saved after every step, so a failure late in the run keeps the figures measured.
        output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["load_average_at_end"] = os.getloadavg()
    return results


def summarize(results: dict) -> list[tuple[str, ...]]:
    """Return the table rows: per-layer seconds, ratios, errors and peak memory."""
    layer = results["per_layer"]
    def estimated(prefix):
        return 4 * layer[f"{prefix}_q"]["seconds"] + 3 * layer[f"{prefix}_down"]["seconds"]

    def joined(prefix, key):
        return {**layer[f"{prefix}_q"][key], **layer[f"{prefix}_down"][key]}

    def peak(prefix):
        return max(layer[f"{prefix}_q"]["peak_rss_mib"], layer[f"{prefix}_down"]["peak_rss_mib"])

    rows = [("measurement", "PEFT s/layer", "adapterhub s/layer", "speed-up", "PEFT error",
             "adapterhub error", "PEFT peak MiB", "adapterhub peak MiB")]

    for label, peft_seconds, ours, peft_errors, peft_peak in (
        ("cat", layer["peft_cat"]["seconds"] / 2, layer["ours_cat"], {}, layer["peft_cat"]["peak_rss_mib"]),
        ("svd (PEFT estimated)", estimated("peft_svd"), layer["ours_svd"], joined("peft_svd", "errors"),
         peak("peft_svd")),
        ("ties (PEFT ties_svd estimated)", estimated("peft_ties_svd"), layer["ours_ties"],
         joined("peft_ties_svd", "errors"), peak("peft_ties_svd")),
    ):
        # Errors are compared on the modules both sides computed, the largest one shown.
        common = sorted(set(peft_errors) & set(ours["errors"]))
        peft_error = max((peft_errors[name] for name in common), default=0.0)
        ours_error = max((ours["errors"][name] for name in common), default=0.0)
        ours_seconds = ours["seconds"] / 2
        rows.append((label, f"{peft_seconds:.4g}", f"{ours_seconds:.4g}", f"{peft_seconds / ours_seconds:,.0f}×",
                     f"{peft_error:.7g}", f"{ours_error:.7g}", f"{peft_peak:.0f}", f"{ours['peak_rss_mib']:.0f}"))
    for method in ("cat", "svd"):
        full = layer[f"ours_{method}_32"]
        rows.append((f"{method}, adapterhub on all 32 layers", "", f"{full['seconds'] / LAYERS:.4g}", "", "", "",
                     "", f"{full['peak_rss_mib']:.0f}"))

    end = results["end_to_end"]
    for method in ("svd", "cat"):
        floor, compose = end[f"floor_{method}"], end[f"compose_{method}"]
        rows.append((f"end to end {method}: I/O floor / adapterhub compose (s)", f"{floor['wall_seconds']:.3g}",
                     f"{compose['wall_seconds']:.3g}", f"{compose['wall_seconds'] / floor['wall_seconds']:.2f}× floor",
                     "", "", f"{floor['peak_rss_mib']:.0f}", f"{compose['peak_rss_mib']:.0f}"))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "compose_vs_peft.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    arguments, rest = parser.parse_known_args()

    if arguments.child:
        kind, *values = arguments.child + rest
        if kind == "ours":
            report = child_ours(values[0], [Path(v) for v in values[1:]], arguments.threads)
        elif kind == "peft":
            report = child_peft(values[0], [Path(v) for v in values[1:]])
        else:
            report = child_io_floor([Path(v) for v in values[2:]], Path(values[1]), int(values[0]))
        print(json.dumps(report))
        return

    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adapterhub-bench-") as folder:
        results = measure(Path(folder), arguments.output)
    results["table"] = summarize(results)
    print_table(results["table"])
    arguments.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"figures written to {arguments.output}")


if __name__ == "__main__":
    main()
