"""The compose, stack and inspect commands and their options."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from adapterhub.cli import main, open_library, report_stored


def _methods_epilog() -> str:
    from adapterhub.compose.methods import METHODS

    width = max(len(name) for name in METHODS)
    lines = [f"  {name.ljust(width)}  {method.summary}" for name, method in METHODS.items()]
    return "\b\nMethods (details and math: docs/composition.md):\n" + "\n".join(lines)


def _help(name: str) -> str:
    from adapterhub.compose.options import help_text

    text = help_text(name)
    return text[0].upper() + text[1:] + "."


def _compose_command(function):
    options = [
        click.option("--weights", "-w", metavar="W,W,...", help=_help("weights")),
        click.option("--module-weight", "module_weights", multiple=True, metavar="ADAPTER:REGEX=W",
                     help=_help("module_weights")),
        click.option("--block-weights", "block_weights", multiple=True, metavar="ADAPTER:IN,MID,OUT",
                     help=_help("block_weights")),
        click.option("--method", "-m", default="cat", show_default=True, help="Composition method (below)."),
        click.option("--rank", "-r", type=int, help=_help("rank")),
        click.option("--energy", type=float, help=_help("energy")),
        click.option("--density", type=float, help=_help("density")),
        click.option("--majority-sign", metavar="total|frequency", help=_help("majority_sign")),
        click.option("--seed", type=int, help=_help("seed")),
        click.option("--name", "-n", metavar="NAME[:TAG]", help="Store the result under this reference."),
        click.option("-o", "--output", type=click.Path(path_type=Path),
                     help="Write the result here instead of (or, with --name, besides) the store."),
        click.option("--format", "fmt", type=click.Choice(["peft", "lora", "kohya", "diffusers", "lycoris"]),
                     default="peft", show_default=True,
                     help="Layout of the result; kohya, diffusers and lycoris are for Stable Diffusion."),
        click.option("--dtype", help=_help("dtype")),
        click.option("--device", help=_help("device")),
        click.option("--allow-base-mismatch", is_flag=True, help=_help("allow_base_mismatch")),
        click.option("--keep-head", metavar="ADAPTER", help=_help("keep_head")),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command(epilog=_methods_epilog())
@click.argument("references", nargs=-1, required=True, metavar="ADAPTER...")
@_compose_command
@click.pass_context
def compose(ctx: click.Context, references: tuple[str, ...], weights: str | None,
            module_weights: tuple[str, ...], fmt: str, name: str | None, output: Path | None,
            quiet: bool, **values: Any) -> None:
    """Compose adapters, given by store reference or path, into one LoRA adapter.

    A stack given as ADAPTER stands for its components with their weights.

    \b
    adapterhub compose task style --weights 1.0,0.6 --method svd --rank 32 --name task+style
    adapterhub compose task style --module-weight 'style:.*self_attn.*=0.3' -o merged/
    adapterhub compose task.lora style.lora -o merged/
    """
    from adapterhub.compose.options import ComposeOptions, parse_module_weight, parse_weights

    rules = tuple(parse_module_weight(text, references) for text in module_weights)
    options = ComposeOptions(weights=parse_weights(weights) if weights else None,
                             module_weights=rules, **values)
    library = open_library(ctx)
    with _progress(quiet) as progress:
        outcome = library.compose(references, options, name=name, output=output, fmt=fmt,
                                  progress=progress)
    for path in outcome.written:
        click.echo(str(path))
    if name is not None or output is None:
        report_stored("stored", outcome.artifact_id, outcome.reference, outcome.replaced)
    if options.method not in ("cat", "linear"):
        click.echo(f"lowest retained energy over modules: {outcome.lineage['min_retained_energy']:.6f}; "
                   f"largest relative error: {outcome.lineage['max_relative_error']:.6g}", err=True)


@main.command()
@click.argument("references", nargs=-1, required=True, metavar="ADAPTER...")
@click.option("--weights", "-w", metavar="W,W,...", help=_help("weights"))
@click.option("--name", "-n", metavar="NAME[:TAG]", help="Reference to point at the stack.")
@click.option("--materialize", is_flag=True,
              help="Store the exact cat adapter (the weighted sum) instead of the stack.")
@click.option("--allow-base-mismatch", is_flag=True, help=_help("allow_base_mismatch"))
@click.option("--keep-head", metavar="ADAPTER", help=_help("keep_head"))
@click.pass_context
def stack(ctx: click.Context, references: tuple[str, ...], weights: str | None, name: str | None,
          materialize: bool, allow_base_mismatch: bool, keep_head: str | None) -> None:
    """Store adapters as a stack that keeps them apart, with a weight each.

    Export writes one PEFT folder per component plus stack.json; compose turns the stack
    into one adapter.

    \b
    adapterhub stack task style --weights 1.0,0.6 --name task+style
    adapterhub export task+style -o task+style/
    """
    from adapterhub.compose.options import parse_weights

    outcome = open_library(ctx).stack(references, parse_weights(weights) if weights else None,
                                      name=name, materialize=materialize,
                                      allow_base_mismatch=allow_base_mismatch, keep_head=keep_head)
    label = f" as {outcome.reference}" if outcome.reference else ""
    click.echo(f"stored {outcome.kind} {outcome.artifact_id[:12]}{label}")
    for component in outcome.components:
        click.echo(f"  {component.weight:+g} × {component.name}  sha256:{component.artifact_id[:12]}")


@main.command()
@click.argument("first", metavar="ADAPTER")
@click.argument("second", metavar="ADAPTER")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def inspect(ctx: click.Context, first: str, second: str, as_json: bool) -> None:
    """Compare two adapters module by module, from their factors.

    For each module both adapt: the cosine similarity of the two updates ΔW (1 same direction,
    0 unrelated, -1 opposite) and the overlap of their column spaces (1 one contains the
    other, 0 orthogonal). Modules that only one adapts are listed below the table.
    """
    comparison = open_library(ctx).inspect(first, second)
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(_comparison_table(comparison))


def _comparison_table(comparison) -> str:
    header = ("MODULE", "COSINE", "OVERLAP")
    rows = [(row.module, f"{row.cosine:+.4f}", f"{row.overlap:.4f}") for row in comparison.modules]
    width = max([len(header[0])] + [len(row[0]) for row in rows])
    lines = [f"{header[0].ljust(width)}  {header[1]:>7}  {header[2]:>7}"]
    lines += [f"{module.ljust(width)}  {cosine:>7}  {overlap:>7}" for module, cosine, overlap in rows]
    if not rows:
        lines = ["no module is adapted by both"]
    for label, names in ((comparison.first, comparison.only_first),
                         (comparison.second, comparison.only_second)):
        if names:
            lines.append(f"only in {label}: {len(names)} modules: {', '.join(names)}")
    return "\n".join(lines)


class _progress:
    """A module counter on stderr, shown only on a terminal and without --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None
        self.done = 0

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int, total: int) -> None:
        """Advance the bar to ``done`` of ``total`` modules; the engine reports after each batch."""
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="modules", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)
