"""The ``adapterhub`` command line: each command converts its arguments, makes one call into
:class:`adapterhub.library.Library` and prints the result.

Errors raised on purpose by adapterhub or the store print as ``Error: …`` with exit code 1;
invalid option values exit with 2, like click's own usage errors. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from adapterhub import __version__
from adapterhub.errors import AdapterHubError, InvalidOptionError
from store.errors import StoreError

logger = logging.getLogger(__name__)


class AdapterHubGroup(click.Group):
    """A click group that turns project errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except InvalidOptionError as exc:
            _fail(ctx, exc, 2)
        except (AdapterHubError, StoreError) as exc:
            _fail(ctx, exc, 1)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            _fail(ctx, f"unexpected {type(exc).__name__}: {exc}; rerun with --debug to see "
                  "the traceback and report it", 1)


def _fail(ctx: click.Context, error: object, code: int) -> None:
    if ctx.find_root().params.get("debug"):
        raise
    click.echo(f"Error: {error}", err=True)
    ctx.exit(code)


@click.group(cls=AdapterHubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="ADAPTERHUB_HOME",
              help="Store folder. Default: $ADAPTERHUB_HOME, else $XDG_DATA_HOME/adapterhub, "
              "else ~/.local/share/adapterhub.")
@click.option("-v", "--verbose", count=True, help="Log progress: -v for INFO, -vv for DEBUG.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="adapterhub")
@click.pass_context
def main(ctx: click.Context, home: Path | None, verbose: int, debug: bool) -> None:
    """Store, compose and share LoRA adapters."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"home": home}


def _library(ctx: click.Context, create: bool = True):
    from adapterhub.library import Library

    return Library.open(ctx.obj["home"], create=create)


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", "-n", metavar="NAME[:TAG]", help="Reference to point at the adapter (tag: latest).")
@click.pass_context
def add(ctx: click.Context, path: Path, name: str | None) -> None:
    """Import the adapter at PATH (a PEFT folder or a .lora file) into the store."""
    result = _library(ctx).add(path, name=name)
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
    rows = _library(ctx).list(base_model=base_model, peft_type=peft_type)
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
    details = _library(ctx).show(reference)
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
    for path in _library(ctx).export(reference, output, fmt=fmt, overwrite=force):
        click.echo(str(path))


def _methods_epilog() -> str:
    from adapterhub.compose.methods import METHODS

    width = max(len(name) for name in METHODS)
    lines = [f"  {name.ljust(width)}  {method.summary}" for name, method in METHODS.items()]
    return "\b\nMethods:\n" + "\n".join(lines)


def _compose_command(function):
    from adapterhub.compose.options import help_text

    options = [
        click.option("--weights", "-w", metavar="W,W,...", help=help_text("weights").capitalize() + "."),
        click.option("--method", "-m", default="cat", show_default=True, help="Composition method (below)."),
        click.option("--rank", "-r", type=int, help=help_text("rank").capitalize() + "."),
        click.option("--energy", type=float, help=help_text("energy").capitalize() + "."),
        click.option("--name", "-n", metavar="NAME[:TAG]", help="Store the result under this reference."),
        click.option("-o", "--output", type=click.Path(path_type=Path),
                     help="Write the result here instead of (or, with --name, besides) the store."),
        click.option("--format", "fmt", type=click.Choice(["peft", "lora"]), default="peft",
                     show_default=True, help="Layout of the result."),
        click.option("--dtype", help=help_text("dtype").capitalize() + "."),
        click.option("--device", help=help_text("device").capitalize() + "."),
        click.option("--allow-base-mismatch", is_flag=True, help=help_text("allow_base_mismatch").capitalize() + "."),
        click.option("--keep-head", metavar="ADAPTER", help=help_text("keep_head").capitalize() + "."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command(epilog=_methods_epilog())
@click.argument("references", nargs=-1, required=True, metavar="ADAPTER...")
@_compose_command
@click.pass_context
def compose(ctx: click.Context, references: tuple[str, ...], weights: str | None, fmt: str,
            name: str | None, output: Path | None, quiet: bool, **values: Any) -> None:
    """Compose adapters, given by store reference or path, into one LoRA adapter.

    \b
    adapterhub compose task style --weights 1.0,0.6 --method svd --rank 32 --name task+style
    adapterhub compose task.lora style.lora -o merged/
    """
    from adapterhub.compose.options import ComposeOptions, parse_weights

    options = ComposeOptions(weights=parse_weights(weights) if weights else None, **values)
    library = _library(ctx)
    with _progress(quiet) as progress:
        outcome = library.compose(references, options, name=name, output=output, fmt=fmt,
                                  progress=progress)
    for path in outcome.written:
        click.echo(str(path))
    if name is not None or output is None:
        label = f" as {outcome.reference}" if outcome.reference else ""
        click.echo(f"stored {outcome.artifact_id[:12]}{label}")
    energy = outcome.lineage["min_retained_energy"]
    if options.method != "cat":
        click.echo(f"lowest retained energy over modules: {energy:.6f}", err=True)


class _progress:
    """A module counter on stderr, shown only on a terminal and without --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=None, label="modules", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(1)

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


@main.command(name="rm")
@click.argument("reference")
@click.pass_context
def remove(ctx: click.Context, reference: str) -> None:
    """Remove a reference; the bytes stay until gc."""
    removal = _library(ctx, create=False).remove(reference)
    for ref in removal.removed_refs:
        click.echo(f"removed {ref}")
    if removal.removed_from_index:
        click.echo(f"removed {removal.artifact_id[:12]} from the index; gc deletes its bytes")


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted, delete nothing.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool) -> None:
    """Delete blobs that no referenced adapter reaches."""
    report = _library(ctx, create=False).gc(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report.deleted_blobs} blobs ({report.freed_bytes} bytes), "
               f"{len(report.removed_artifacts)} unreferenced artifacts")


@main.command()
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Re-hash every blob; exit 1 when any is corrupt or missing."""
    report = _library(ctx, create=False).verify()
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
