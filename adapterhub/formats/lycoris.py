"""LyCORIS LoHa and LoKr files, and the LoRA factors of their updates.

LyCORIS files use kohya's module keys (``lora_unet_…``, see :mod:`adapterhub.formats.kohya`)
with other parameters per module. With scale s = α / r (α = r when ``.alpha`` is absent):

- LoHa: ΔW = s · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), a Hadamard product of two rank-r
  products. Convolutions may use a Tucker core per side (``hada_t1``, ``hada_t2``).
- LoKr: ΔW = s · kron(w1, w2), each side full (``lokr_w1``) or a product
  (``lokr_w1_a @ lokr_w1_b``), w2 possibly with a Tucker core (``lokr_t2``). With neither
  side decomposed LyCORIS uses s = 1 for any α, and r is taken as the larger side of w2.

In memory the tensors sit under PEFT's LoHa and LoKr parameter names
(``base_model.model.unet.….hada_w1_a``) with ``peft_type`` LOHA or LOKR, so the writer gives
back the same tensors. :func:`lycoris_modules` gives each module as LoRA factors of its
exact update: the Hadamard product of two low-rank products is itself one of rank r², and
kron(U₁S₁V₁ᵀ, U₂S₂V₂ᵀ) = kron(U₁S₁, U₂S₂) kron(V₁, V₂)ᵀ, so neither needs the dense ΔW
except with Tucker cores. The factors are then cut to the singular values above the
float64 rounding level, and what that drops is the module's ``conversion_error``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from adapterhub.adapter import PEFT_KEY_PREFIX, LoraAdapter, LoraModule, pattern_value
from adapterhub.errors import AdapterFormatError, ExportError
from adapterhub.formats import kohya, sd_naming
from adapterhub.formats.sd_config import build_config
from adapterhub.formats.sd_family import base_family
from adapterhub.formats.sd_files import module_problems_error, safetensors_keys
from adapterhub.formats.tensorfile import read_safetensors, safetensors_bytes

NAME = "lycoris"
STORED_NAME = "lycoris.safetensors"
LOHA_PARAMETERS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARAMETERS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
EXPECTED_KEYS = (
    "LyCORIS keys: lora_unet_, lora_te_, lora_te1_ or lora_te2_ plus an SD UNet or CLIP module "
    "path, ending in .hada_w1_a … .hada_t2 (LoHa), .lokr_w1 … .lokr_t2 (LoKr) or .alpha"
)
_PEFT_KEY = re.compile(
    rf"^{re.escape(PEFT_KEY_PREFIX)}(?P<module>.+)\.(?P<parameter>{'|'.join(LOHA_PARAMETERS + LOKR_PARAMETERS)})$"
)
_TUCKER = "i j k l, j r, i p -> p r k l"


def detect(path: Path) -> bool:
    """Return whether ``path`` is a safetensors file with kohya-style LoHa or LoKr keys."""
    keys = safetensors_keys(path)
    return keys is not None and kohya.has_kohya_keys(keys) and any(map(_is_lycoris_parameter, keys))


def source_files(path: Path) -> list[tuple[str, Path]]:
    """List the one file of the adapter as (name in the store, file)."""
    return [(STORED_NAME, path)]


def load(path: Path) -> LoraAdapter:
    """Read a LyCORIS LoHa or LoKr file; raises :class:`AdapterFormatError` naming what is wrong."""
    return load_files({STORED_NAME: path}, str(path))


def load_files(files: dict[str, Path], source: str) -> LoraAdapter:
    """Read a LyCORIS adapter from its one file, given by its name in the store.

    A file with LoRA keys only (LyCORIS LoCon, or a LoRA adapter written in this format) is
    read as a kohya file.
    """
    tensors, metadata = read_safetensors(files[STORED_NAME])
    if not any(_is_lycoris_parameter(key) for key in tensors):
        return kohya.load_files({kohya.STORED_NAME: files[STORED_NAME]}, source)
    metadata.pop(kohya.SPELLING_KEY, None)
    groups = kohya.read_groups(tensors, LOHA_PARAMETERS + LOKR_PARAMETERS + ("alpha",),
                               EXPECTED_KEYS, source)
    kinds = {name: _kind(group) for name, group in groups.modules.items()}
    if len(set(kinds.values())) > 1:
        raise AdapterFormatError(
            f"{source}: the file mixes LoHa and LoKr modules ({_example(kinds, 'loha')} and "
            f"{_example(kinds, 'lokr')}); adapterhub reads one kind per file, so split it"
        )

    peft_tensors: dict[str, torch.Tensor] = {}
    specs: dict[str, tuple[int, float]] = {}
    problems: list[str] = []
    for name, group in groups.modules.items():
        rank = _rank(kinds[name], group, groups.keys[name], problems)
        alpha = groups.effective_alpha(name, rank, problems)
        if kinds[name] == "lokr" and _lokr_is_full(group):
            alpha = float(rank)
        specs[name] = (rank, alpha)
        for parameter, tensor in group.items():
            if parameter != "alpha":
                peft_tensors[f"{PEFT_KEY_PREFIX}{name}.{parameter}"] = tensor
    if problems:
        raise module_problems_error(source, problems)

    peft_type = "LOHA" if set(kinds.values()) == {"loha"} else "LOKR"
    adapter = LoraAdapter(build_config(specs, peft_type=peft_type), peft_tensors, metadata)
    # The LoRA view checks that each module's parameters fit together.
    try:
        adapter.modules
    except AdapterFormatError as exc:
        raise AdapterFormatError(f"{source}: {exc}") from exc
    weight_dtypes = {name: next(t for p, t in group.items() if p != "alpha").dtype
                     for name, group in groups.modules.items()}
    kohya.record_spelling(adapter, groups, weight_dtypes, {n: a for n, (_, a) in specs.items()})
    return adapter


def to_files(adapter: LoraAdapter) -> dict[str, bytes]:
    """Serialize ``adapter`` as one LyCORIS file, deterministically.

    A plain LoRA adapter is written with kohya's LoRA keys, which is what LyCORIS calls LoCon.
    Raises :class:`ExportError` for modules kohya keys cannot name.
    """
    if adapter.peft_type not in ("LOHA", "LOKR"):
        return {STORED_NAME: kohya.to_files(adapter)[kohya.STORED_NAME]}
    groups = raw_groups(adapter)
    unexpected = [key for key in adapter.tensors if not _PEFT_KEY.match(key)]
    if unexpected:
        raise ExportError(f"cannot write a LyCORIS file: tensors {', '.join(sorted(unexpected)[:5])} "
                          "are not LoHa or LoKr parameters")
    alphas = {}
    for name, group in groups.items():
        rank = _rank(_kind(group), group, name, [])
        alphas[name] = float(pattern_value(adapter.config.get("alpha_pattern"), name,
                                           adapter.config.get("lora_alpha") or rank))
    dtypes = {name: next(iter(group.values())).dtype for name, group in groups.items()}
    tensors, metadata = kohya.write_groups(adapter, groups, alphas, dtypes)
    return {STORED_NAME: safetensors_bytes(tensors, metadata)}


def raw_groups(adapter: LoraAdapter) -> dict[str, dict[str, torch.Tensor]]:
    """Group an adapter's LoHa or LoKr parameters by module name."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.tensors.items():
        match = _PEFT_KEY.match(key)
        if match:
            groups.setdefault(match["module"], {})[match["parameter"]] = tensor
    return groups


def lycoris_modules(adapter: LoraAdapter) -> dict[str, LoraModule]:
    """Return each LoHa or LoKr module of ``adapter`` as LoRA factors of its exact update.

    Raises :class:`AdapterFormatError` listing every module whose parameters are missing or
    whose shapes do not fit together.
    """
    problems: list[str] = []
    modules = {}
    for name, group in sorted(raw_groups(adapter).items()):
        try:
            modules[name] = _lora_view(adapter, name, group)
        except AdapterFormatError as exc:
            problems.append(f"module {name!r}: {exc}")
        except (ValueError, RuntimeError) as exc:
            first_line = str(exc).strip().splitlines()[0]
            problems.append(f"module {name!r}: its parameters do not fit together ({first_line})")
    if problems:
        raise AdapterFormatError("invalid LyCORIS modules:\n  " + "\n  ".join(problems))
    if base_family(modules) == "sd1":
        modules = {name: _as_pointwise_conv(module) for name, module in modules.items()}
    return modules


def _lora_view(adapter: LoraAdapter, name: str, group: dict[str, torch.Tensor]) -> LoraModule:
    kind = _kind(group)
    problems: list[str] = []
    rank = _rank(kind, group, name, problems)
    if problems:
        raise AdapterFormatError("; ".join(problems))
    alpha = float(pattern_value(adapter.config.get("alpha_pattern"), name,
                                adapter.config.get("lora_alpha") or rank))
    scale = alpha / rank

    if kind == "loha":
        (exact_b, exact_a), kernel = _loha_factors(group, name)
    else:
        (exact_b, exact_a), kernel = _lokr_factors(group, name)
    exact_b = exact_b * scale
    b, a = _reduce(exact_b, exact_a)

    dtype = _view_dtype(group)
    b, a = b.to(dtype), a.to(dtype)
    error = _relative_error(exact_b, exact_a, b.double(), a.double())
    kept = a.shape[0]
    if kernel is not None:
        a = a.reshape(kept, -1, *kernel)
        b = b.reshape(b.shape[0], kept, 1, 1)
    return LoraModule(name, kind, a, b, kept, float(kept), 1.0, error)


def _loha_factors(group: dict[str, torch.Tensor], name: str):
    w1_a, w1_b, w2_a, w2_b = (_required(group, p).double() for p in LOHA_PARAMETERS[:4])
    if "hada_t1" in group or "hada_t2" in group:
        t1, t2 = _required(group, "hada_t1").double(), _required(group, "hada_t2").double()
        dense = torch.einsum(_TUCKER, t1, w1_b, w1_a) * torch.einsum(_TUCKER, t2, w2_b, w2_a)
        return _dense_factors(dense.reshape(dense.shape[0], -1)), tuple(t1.shape[2:])

    # (A1 B1) ⊙ (A2 B2) = U V with U[:, i·r2 + j] = A1[:, i] · A2[:, j] and
    # V[i·r2 + j, :] = B1[i, :] · B2[j, :], the face-splitting product.
    outer = (w1_a[:, :, None] * w2_a[:, None, :]).reshape(w1_a.shape[0], -1)
    inner = (w1_b[:, None, :] * w2_b[None, :, :]).reshape(-1, w1_b.shape[1])
    return (outer, inner), _kernel_from_name(name, w1_b.shape[1])


def _lokr_factors(group: dict[str, torch.Tensor], name: str):
    w1 = _side(group, "lokr_w1", "lokr_w1_a", "lokr_w1_b")
    if "lokr_t2" in group:
        w2 = torch.einsum(_TUCKER, group["lokr_t2"].double(), _required(group, "lokr_w2_b").double(),
                          _required(group, "lokr_w2_a").double())
    else:
        w2 = _side(group, "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    kernel = tuple(w2.shape[2:]) if w2.dim() == 4 else None
    w2 = w2.reshape(w2.shape[0], -1)
    if kernel is None:
        kernel = _kernel_from_name(name, w1.shape[1] * w2.shape[1])

    # kron(B1 A1, B2 A2) = kron(B1, B2) kron(A1, A2): the SVD of each side gives factors.
    b1, a1 = _exact_pair(w1)
    b2, a2 = _exact_pair(w2)
    return (_kron(b1, b2), _kron(a1, a2)), kernel


def _kron(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    # torch.kron fails on some strided inputs (a column sliced from an SVD, in torch 2.13),
    # so the product is spelled out: element [i·c + k, j·d + l] is first[i, j] · second[k, l].
    rows, columns = first.shape[0] * second.shape[0], first.shape[1] * second.shape[1]
    return (first[:, None, :, None] * second[None, :, None, :]).reshape(rows, columns)


def _side(group: dict[str, torch.Tensor], full: str, left: str, right: str) -> torch.Tensor:
    if full in group:
        return group[full].double()
    return _required(group, left).double() @ _required(group, right).double()


def _exact_pair(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    kept = max(1, int((s > _tolerance(s, matrix.shape)).sum()))
    return u[:, :kept] * s[:kept], vh[:kept]


def _dense_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from adapterhub.compose.lowrank import dense_truncated_svd

    result = dense_truncated_svd(delta, rank=min(delta.shape))
    return result.B, result.A


def _reduce(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut exact factors B @ A to the singular values above rounding level."""
    from adapterhub.compose.lowrank import truncated_svd

    result = truncated_svd(b, a, rank=min(a.shape[0], b.shape[0], a.shape[1]))
    s = result.singular_values
    kept = max(1, int((s > _tolerance(s, (b.shape[0], a.shape[1]))).sum()))
    return result.B[:, :kept], result.A[:kept]


def _relative_error(exact_b, exact_a, b, a) -> float:
    """Return ‖B₀A₀ − BA‖_F / ‖B₀A₀‖_F without forming either product.

    The difference is [B₀ | −B] @ [A₀; A]; with [B₀ | −B] = QR it has the norm of R @ [A₀; A].
    """
    _, r_exact = torch.linalg.qr(exact_b)
    reference = float(torch.linalg.norm(r_exact @ exact_a))
    if reference == 0.0:
        return 0.0
    _, r_both = torch.linalg.qr(torch.cat([exact_b, -b], dim=1))
    return float(torch.linalg.norm(r_both @ torch.cat([exact_a, a], dim=0))) / reference


def _tolerance(singular_values: torch.Tensor, shape) -> float:
    # The numerical rank: singular values below max(m, n) · eps · σ₁ are rounding noise.
    if singular_values.numel() == 0:
        return 0.0
    return float(singular_values[0]) * max(shape) * torch.finfo(torch.float64).eps


def _kernel_from_name(name: str, flat_in: int) -> tuple[int, int] | None:
    size = sd_naming.conv_kernel_size(name)
    if size is None or flat_in % (size * size):
        return None
    return (size, size)


def _as_pointwise_conv(module: LoraModule) -> LoraModule:
    # SD 1.x projects into and out of its transformers with 1×1 convolutions, which LyCORIS
    # stores flattened. The family's LoRA modules are 4-D, so the views are made 4-D too.
    if module.lora_A.dim() != 2 or not module.name.endswith((".proj_in", ".proj_out")):
        return module
    from dataclasses import replace

    return replace(module, lora_A=module.lora_A[:, :, None, None],
                   lora_B=module.lora_B[:, :, None, None])


def _is_lycoris_parameter(key: str) -> bool:
    return ".hada_" in key or ".lokr_" in key


def _kind(group: dict[str, torch.Tensor]) -> str:
    return "loha" if any(p.startswith("hada_") for p in group) else "lokr"


def _rank(kind: str, group: dict[str, torch.Tensor], label: str, problems: list[str]) -> int:
    """Return the module's rank r: the inner size of its low-rank products."""
    if kind == "loha":
        if "hada_w1_b" not in group:
            problems.append(f"{label} has no hada_w1_b")
            return 1
        return group["hada_w1_b"].shape[0]
    for right in ("lokr_w2_b", "lokr_w1_b"):
        if right in group:
            return group[right].shape[0]
    if "lokr_w2" not in group:
        problems.append(f"{label} has neither lokr_w2 nor lokr_w2_a and lokr_w2_b")
        return 1
    return max(group["lokr_w2"].shape[:2])


def _lokr_is_full(group: dict[str, torch.Tensor]) -> bool:
    return "lokr_w1" in group and "lokr_w2" in group


def _required(group: dict[str, torch.Tensor], parameter: str) -> torch.Tensor:
    if parameter not in group:
        raise AdapterFormatError(f"{parameter} is missing (found {', '.join(sorted(group))})")
    return group[parameter]


def _view_dtype(group: dict[str, torch.Tensor]) -> torch.dtype:
    # Sixteen-bit files give float32 views: the factors of the exact update are not
    # representable in the file's dtype.
    dtype = next(iter(group.values())).dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _example(kinds: dict[str, str], kind: str) -> str:
    return next(name for name, value in sorted(kinds.items()) if value == kind)
