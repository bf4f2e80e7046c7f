"""The card command: render the README.md model card of a stored adapter or stack."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import main, open_library


@main.command()
@click.argument("reference")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the card to this file instead of printing it. A card already there is "
              "updated: the text outside adapterhub's markers is kept.")
@click.option("--template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Jinja2 template to render instead of the packaged one.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="A card field (license, datasets, language, metrics, tags, pipeline_tag, "
              "base_model, license_name, license_link), title, description, or any other key to "
              "list in the card. Lists take commas. Repeatable.")
@click.option("--fresh", is_flag=True,
              help="Ignore the README.md stored with the adapter and the file at --output; "
              "render from the template alone.")
@click.pass_context
def card(ctx: click.Context, reference: str, output: Path | None, template: Path | None,
         assignments: tuple[str, ...], fresh: bool) -> None:
    """Render the README.md model card of a stored adapter or stack.

    The card states what the store records: configuration, files with sha256, the
    composition recipe or stack components, and a PEFT loading snippet, under YAML metadata
    that the Hub accepts.

    \b
    adapterhub card task+style -o README.md --set license=apache-2.0 --set datasets=imdb
    """
    from adapterhub.cards import parse_assignments, read_card, write_card

    overrides = parse_assignments(assignments)
    existing = None
    if fresh:
        existing = ""
    elif output is not None:
        existing = read_card(output)
    text = open_library(ctx, create=False).card(reference, template=template,
                                                overrides=overrides, existing=existing)
    if output is None:
        click.echo(text, nl=False)
        return
    write_card(output, text)
    click.echo(str(output))
