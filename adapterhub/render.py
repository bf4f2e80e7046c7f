"""Plain-text views of store contents for the CLI: the adapter table and the detail page."""

from __future__ import annotations

from typing import Any

ID_WIDTH = 12


def adapter_table(rows: list[dict[str, Any]]) -> str:
    """Render ``ls`` rows as an aligned table, one adapter per line."""
    if not rows:
        return "no adapters stored; add one with: adapterhub add PATH --name NAME"
    header = ("REFERENCE", "ID", "TYPE", "BASE MODEL", "RANK", "MODULES", "SIZE")
    lines = [header]
    for row in rows:
        metadata = row.get("metadata") or {}
        lines.append((
            ", ".join(row.get("refs") or []) or "-",
            row["id"][:ID_WIDTH],
            str(row.get("peft_type") or row.get("kind") or "-"),
            str(row.get("base_model") or "-"),
            str(row.get("rank") or "-"),
            str(metadata.get("module_count", "-")),
            human_bytes(row.get("bytes") or 0),
        ))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines
    )


def adapter_details(details: dict[str, Any]) -> str:
    """Render ``show`` output: identity, configuration, files and the composition recipe."""
    metadata = details["metadata"]
    lines = [
        f"id:          {details['id']}",
        f"references:  {', '.join(details['refs']) or '-'}",
        f"kind:        {details['kind']} ({metadata.get('format', '?')} format)",
        f"peft type:   {metadata.get('peft_type', '-')}",
        f"base model:  {metadata.get('base_model') or '-'}",
        f"task type:   {metadata.get('task_type') or '-'}",
        f"rank:        {metadata.get('rank')} (modules: {_ranks(metadata)}), alpha {metadata.get('alpha')}"
        + (", rsLoRA" if metadata.get("use_rslora") else ""),
        f"targets:     {', '.join(metadata.get('target_modules') or []) or '-'}"
        f" ({metadata.get('module_count', 0)} modules)",
        f"heads:       {', '.join(metadata.get('modules_to_save') or []) or '-'}",
        f"parameters:  {metadata.get('parameters', 0):,} ({metadata.get('dtype', '?')})",
        "files:",
    ]
    lines += [f"  {f['path']}  {human_bytes(f['size'])}  sha256:{f['sha256']}" for f in details["files"]]
    lineage = metadata.get("lineage")
    if lineage:
        lines += _recipe(lineage)
    return "\n".join(lines)


def human_bytes(size: int) -> str:
    """Format a byte count with a binary unit (``1.5 MiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _ranks(metadata: dict[str, Any]) -> str:
    ranks = metadata.get("module_ranks") or []
    return ", ".join(str(rank) for rank in ranks) or "-"


def _recipe(lineage: dict[str, Any]) -> list[str]:
    parameters = ", ".join(
        f"{key}={value}" for key, value in sorted(lineage.get("parameters", {}).items())
        if key not in ("method", "weights")
    )
    lines = [f"recipe:      {lineage['method']}" + (f" ({parameters})" if parameters else ""), "parents:"]
    lines += [
        f"  {parent['weight']:+g} × {parent['label']}  sha256:{parent['id'][:ID_WIDTH]}"
        for parent in lineage.get("parents", [])
    ]
    modules = lineage.get("modules") or {}
    if all(report["retained_energy"] == 1.0 and not _errors(report) for report in modules.values()):
        lines.append(f"modules:     {len(modules)}, all exact (retained energy 1.0, no error)")
        return lines
    lines.append(f"retained energy per module (lowest {lineage.get('min_retained_energy', 1.0):.6f}):")
    width = max((len(name) for name in modules), default=0)
    lines += [f"  {name.ljust(width)}  rank {report['rank']:>4}  {report['retained_energy']:.6f}"
              + _errors(report) for name, report in sorted(modules.items(), key=_layer_order)]
    return lines


def _layer_order(item: tuple[str, Any]) -> list[tuple[int, str]]:
    """Sort module names with numbers compared as numbers, so layer 2 comes before layer 10."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in item[0].split(".")]


def _errors(report: dict[str, Any]) -> str:
    """Format the truncation and conversion errors a module report carries, if any."""
    parts = []
    if report.get("relative_error"):
        parts.append(f"relative error {report['relative_error']:.3g}")
    if report.get("conversion_error"):
        parts.append(f"conversion error {report['conversion_error']:.3g}")
    return "  " + ", ".join(parts) if parts else ""
