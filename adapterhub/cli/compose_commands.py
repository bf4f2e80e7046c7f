"""The compose command and its options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from adapterhub.cli import main, open_library

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
    library = open_library(ctx)
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


