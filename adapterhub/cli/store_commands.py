"""Commands that add, list, show, export and maintain stored adapters."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapterhub.cli import main, open_library

@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", "-n", metavar="NAME[:TAG]", help="Reference to point at the adapter (tag: latest).")
@click.pass_context
def add(ctx: click.Context, path: Path, name: str | None) -> None:
    """Import the adapter at PATH (a PEFT folder or a .lora file) into the store."""
    result = open_library(ctx).add(path, name=name)
    state = "added" if result.created else "already stored"
    suffix = f" as {result.reference}" if result.reference else ""
    click.echo(f"{state} {result.artifact_id[:12]}{suffix}")


@main.command(name="ls")
@click.option("--base-model", help="Only adapters of this base model.")
@click.option("--type", "peft_type", help="Only adapters of this PEFT type (LORA, ADALORA, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_command(ctx: click.Context, base_model: str | None, peft_type: str | None, as_json: bool) -> None:
    """List stored adapters."""
    rows = open_library(ctx).list(base_model=base_model, peft_type=peft_type)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    from adapterhub.render import adapter_table

    click.echo(adapter_table(rows))


@main.command()
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def show(ctx: click.Context, reference: str, as_json: bool) -> None:
    """Show an adapter's configuration, files, references and composition recipe."""
    details = open_library(ctx).show(reference)
    if as_json:
        click.echo(json.dumps(details, indent=2, sort_keys=True))
        return
    from adapterhub.render import adapter_details

    click.echo(adapter_details(details))


@main.command()
@click.argument("reference")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for a PEFT adapter, file for a .lora adapter.")
@click.option("--format", "fmt", type=click.Choice(["peft", "lora"]), default="peft", show_default=True,
              help="Layout to write.")
@click.option("--force", is_flag=True, help="Overwrite files that exist at the destination.")
@click.pass_context
def export(ctx: click.Context, reference: str, output: Path, fmt: str, force: bool) -> None:
    """Write a stored adapter to disk."""
    for path in open_library(ctx).export(reference, output, fmt=fmt, overwrite=force):
        click.echo(str(path))


@main.command(name="rm")
@click.argument("reference")
@click.pass_context
def remove(ctx: click.Context, reference: str) -> None:
    """Remove a reference; the bytes stay until gc."""
    removal = open_library(ctx, create=False).remove(reference)
    for ref in removal.removed_refs:
        click.echo(f"removed {ref}")
    if removal.removed_from_index:
        click.echo(f"removed {removal.artifact_id[:12]} from the index; gc deletes its bytes")


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted, delete nothing.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool) -> None:
    """Delete blobs that no referenced adapter reaches."""
    report = open_library(ctx, create=False).gc(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report.deleted_blobs} blobs ({report.freed_bytes} bytes), "
               f"{len(report.removed_artifacts)} unreferenced artifacts")


@main.command()
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Re-hash every blob; exit 1 when any is corrupt or missing."""
    report = open_library(ctx, create=False).verify()
    for digest in report.corrupt:
        click.echo(f"corrupt blob sha256:{digest}: its bytes no longer match its name", err=True)
    for blob in report.missing:
        click.echo(f"missing blob sha256:{blob.digest}, needed by {blob.needed_by}", err=True)
    for problem in report.problems:
        click.echo(problem, err=True)
    count = len(report.corrupt) + len(report.missing) + len(report.problems)
    click.echo(f"checked {report.checked_blobs} blobs: {count} problems")
    if not report.ok:
        click.echo("re-add or pull the affected adapters, then run gc", err=True)
        ctx.exit(1)
