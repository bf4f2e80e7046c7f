"""Running a method over the planned modules: device transfer, batching, threads, progress.

On a GPU the factors of all modules travel to the device in one copy and the composed factors
come back in one copy. There, modules whose stacked factors have the same shape are composed in
one batched call when the method offers one, so the device works on few large problems instead
of many small ones. On the CPU each module is composed on its own, which measured faster.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Sequence

import torch

from adapterhub.compose.methods import Method, ModuleJob, ModuleResult, Settings, Term

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def build_jobs(
    plan: dict[str, list[tuple[int, object]]],
    weights: dict[str, list[float]],
    device: torch.device,
    dtype: torch.dtype,
) -> list[ModuleJob]:
    """Return one job per module, with every factor in ``dtype`` on ``device``."""
    factors = []
    for members in plan.values():
        for _, module in members:
            factors.extend(module.factors())
    moved = iter(to_device(factors, device, dtype))

    jobs = []
    for name, members in plan.items():
        terms = []
        for (_, module), weight in zip(members, weights[name]):
            lora_a, lora_b = next(moved), next(moved)
            terms.append(Term(lora_a, lora_b, module.scale, weight))
        jobs.append(ModuleJob(name, tuple(terms)))
    return jobs


def run_jobs(
    method: Method, jobs: Sequence[ModuleJob], settings: Settings, progress: Progress | None
) -> list[ModuleResult]:
    """Compose every job with ``method``, in batches of equal stacked shape where it can.

    ``progress`` is called with the number of modules finished so far and the total, after
    each batch or module.
    """
    results: list[ModuleResult | None] = [None] * len(jobs)
    done = 0
    for indexes in _batches(method, jobs):
        if len(indexes) > 1:
            batch = method.combine_group([jobs[index] for index in indexes], settings)
        else:
            batch = [method.combine(jobs[indexes[0]], settings)]
        for index, result in zip(indexes, batch):
            results[index] = result
        done += len(indexes)
        if progress is not None:
            progress(done, len(jobs))
    return results


def results_to_host(results: Sequence[ModuleResult]) -> list[ModuleResult]:
    """Bring all composed factors to the CPU in one copy."""
    factors = [tensor for result in results for tensor in (result.lora_A, result.lora_B)]
    moved = iter(to_host(factors))
    return [
        ModuleResult(next(moved), next(moved), result.retained_energy, result.relative_error)
        for result in results
    ]


def _batches(method: Method, jobs: Sequence[ModuleJob]) -> list[list[int]]:
    # NOTE: batches only pay off on an accelerator. On the CPU, torch 2.13's batched
    # triangular solve is slower than a loop over the items, and stacking copies the factors.
    # Composing Llama-2-7B shapes took 69 ms per layer batched and 44 ms per module (2-core
    # AMD EPYC, one thread, measured with the data of benchmarks/compose_vs_peft.py).
    device = jobs[0].terms[0].lora_A.device if jobs else None
    if method.combine_group is None or device is None or device.type == "cpu":
        return [[index] for index in range(len(jobs))]
    groups: dict[tuple, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(job.stacked_shape, []).append(index)
    return list(groups.values())


def to_device(tensors: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """Return ``tensors`` in ``dtype`` on ``device``, copied there in one transfer.

    On the CPU each tensor is only converted (no copy when it has the dtype already).
    Elsewhere they are packed into one pinned host buffer, which moves in one copy and is
    split into views on the device.
    """
    if device.type == "cpu":
        return [tensor.to(dtype) for tensor in tensors]
    # NOTE: the tests run on the CPU only, so this path and the batched methods it feeds have
    # not run on a GPU; pack and unpack themselves are tested on the CPU.
    flat = pack(tensors, dtype, pin_memory=device.type == "cuda")
    return unpack(flat.to(device), [tensor.shape for tensor in tensors])


def to_host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Return ``tensors`` on the CPU, copied there in one transfer when they are elsewhere."""
    if all(tensor.device.type == "cpu" for tensor in tensors):
        return list(tensors)
    flat = pack(tensors, tensors[0].dtype)
    return unpack(flat.to("cpu"), [tensor.shape for tensor in tensors])


def pack(tensors: Sequence[torch.Tensor], dtype: torch.dtype, pin_memory: bool = False) -> torch.Tensor:
    """Copy ``tensors`` into one flat buffer of ``dtype`` on the device of the first one."""
    device = tensors[0].device if tensors else torch.device("cpu")
    total = sum(tensor.numel() for tensor in tensors)
    flat = torch.empty(total, dtype=dtype, device=device, pin_memory=pin_memory and device.type == "cpu")
    for view, tensor in zip(unpack(flat, [tensor.shape for tensor in tensors]), tensors):
        view.copy_(tensor)
    return flat


def unpack(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Split a flat buffer into views of the given shapes, in order."""
    views = []
    offset = 0
    for shape in shapes:
        size = shape.numel()
        views.append(flat[offset:offset + size].view(shape))
        offset += size
    return views


@contextlib.contextmanager
def compute_threads(device: torch.device, method: Method) -> Iterator[None]:
    """Run the low-rank methods on one CPU thread, restoring the thread count afterwards.

    Their many small QR and SVD calls gain little from a second thread and lose much when
    another process is busy. On a 2-core AMD EPYC with a neighbour running, one Llama-2-7B
    layer took 43 ms on one thread and 212 ms on two. Dense methods keep torch's setting.
    """
    # NOTE: torch's thread count is global to the process, so other threads that compute
    # with torch during a composition run on one thread too.
    if device.type != "cpu" or method.dense:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
