"""Commands that add, list, show, export and maintain stored adapters."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapterhub.cli import main, open_library, report_stored
from store.errors import StoreNotFoundError

def _parse_meta(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    """Turn KEY=VALUE strings into a dict; an empty VALUE becomes None (remove the key)."""
    meta: dict[str, str | None] = {}
    for text in values:
        key, separator, value = text.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE; write e.g. description='Task adapter'")
        meta[key] = value or None
    return meta


_meta_option = click.option(
    "--meta", "-m", "meta", multiple=True, metavar="KEY=VALUE", callback=_parse_meta,
    help="Annotate the adapter (repeatable), e.g. description='Task adapter'; KEY= removes a key. "
    "Annotations are searchable and never change the adapter's id.")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", "-n", metavar="NAME[:TAG]", help="Reference to point at the adapter (tag: latest).")
@_meta_option
@click.option("--allow-nonfinite", is_flag=True,
              help="Store the adapter even if its tensors hold NaN or infinite values.")
@click.pass_context
def add(ctx: click.Context, path: Path, name: str | None, meta: dict, allow_nonfinite: bool) -> None:
    """Import the adapter at PATH into the store.

    PATH is a PEFT folder, a .lora file, or a Stable Diffusion LoRA: a kohya, LyCORIS or
    diffusers .safetensors file (or a folder holding pytorch_lora_weights.safetensors).
    """
    result = open_library(ctx).add(path, name=name, meta=meta or None, allow_nonfinite=allow_nonfinite)
    state = "added" if result.created else "already stored"
    report_stored(state, result.artifact_id, result.reference, result.replaced)


@main.command(name="ls")
@click.option("--search", "-s", metavar="TEXT",
              help="Only adapters whose names, tags, description, annotations or base model "
              "contain words starting with each word of TEXT; best matches first.")
@click.option("--base-model", help="Only adapters of this base model.")
@click.option("--type", "peft_type", help="Only adapters of this PEFT type (LORA, ADALORA, ...).")
@click.option("--kind", type=click.Choice(["adapter", "stack"]), help="Only artifacts of this kind.")
@click.option("--min-rank", type=int, help="Only adapters of at least this rank.")
@click.option("--max-rank", type=int, help="Only adapters of at most this rank.")
@click.option("--target-module", metavar="MODULE", help="Only adapters that adapt this module (q_proj, ...).")
@click.option("--name", metavar="NAME", help="Only adapters with a reference of this name.")
@click.option("--tag", metavar="TAG", help="Only adapters with a reference of this tag.")
@click.option("--created-after", metavar="DATE",
              help="Only adapters added after this ISO-8601 date or time (UTC unless it has an offset).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool, **filters) -> None:
    """List stored adapters, filtered and searched."""
    given = {key: value for key, value in filters.items() if value is not None}
    try:
        rows = open_library(ctx, create=False).list(**given)
    except StoreNotFoundError:
        rows = []  # Listing never creates a store; no store lists like an empty one.
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows and given:
        options = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in given.items())
        click.echo(f"no adapters match {options}; run adapterhub ls without filters to see them all")
        return
    from adapterhub.render import adapter_table

    click.echo(adapter_table(rows))


@main.command()
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def show(ctx: click.Context, reference: str, as_json: bool) -> None:
    """Show an adapter's configuration, files, references and composition recipe, or a
    stack's components and weights."""
    # An hf:// reference pulls into the store on first use, so it may create one.
    details = open_library(ctx, create=reference.startswith("hf://")).show(reference)
    if as_json:
        click.echo(json.dumps(details, indent=2, sort_keys=True))
        return
    if details["kind"] == "stack":
        from adapterhub.compose.stack import stack_details

        click.echo(stack_details(details))
        return
    from adapterhub.render import adapter_details

    click.echo(adapter_details(details))
    if details["annotations"]:
        click.echo("annotations:")
        for key, value in sorted(details["annotations"].items()):
            click.echo(f"  {key}: {value}")


@main.command()
@click.argument("reference")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for a PEFT adapter or a stack, file (or existing folder) for the "
                   "single-file formats.")
@click.option("--format", "fmt", type=click.Choice(["peft", "lora", "kohya", "diffusers", "lycoris"]),
              default="peft", show_default=True,
              help="Layout to write: PEFT folder, .lora file, or a kohya/A1111, diffusers or "
                   "LyCORIS .safetensors file for Stable Diffusion.")
@click.option("--force", is_flag=True, help="Overwrite files that exist at the destination.")
@click.pass_context
def export(ctx: click.Context, reference: str, output: Path, fmt: str, force: bool) -> None:
    """Write a stored adapter to disk."""
    library = open_library(ctx, create=reference.startswith("hf://"))
    for path in library.export(reference, output, fmt=fmt, overwrite=force):
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


@main.command()
@click.argument("reference")
@click.argument("name", metavar="NAME[:TAG]")
@click.pass_context
def tag(ctx: click.Context, reference: str, name: str) -> None:
    """Point the reference NAME[:TAG] (tag: latest) at the adapter REFERENCE names."""
    artifact_id, target = open_library(ctx, create=False).tag(reference, name)
    click.echo(f"tagged {artifact_id[:12]} as {target}")


@main.command()
@click.argument("reference")
@click.argument("meta", nargs=-1, required=True, metavar="KEY=VALUE...", callback=_parse_meta)
@click.pass_context
def annotate(ctx: click.Context, reference: str, meta: dict) -> None:
    """Set annotations of a stored adapter (KEY= removes one); its id stays the same."""
    annotations = open_library(ctx, create=False).annotate(reference, meta)
    for key, value in sorted(annotations.items()):
        click.echo(f"{key}: {value}")


@main.command()
@click.pass_context
def reindex(ctx: click.Context) -> None:
    """Rebuild index.db from the blobs, ref files and annotation files."""
    report = open_library(ctx, create=False).reindex()
    for problem in report.problems:
        click.echo(problem, err=True)
    click.echo(f"indexed {report.artifacts} artifacts and {report.refs} references")
