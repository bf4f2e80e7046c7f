"""Commands that talk to the Hugging Face Hub: pull, push, sync and search-hub."""

from __future__ import annotations

import json

import click

from adapterhub.cli import main, open_library

ENVIRONMENT_EPILOG = (
    "\b\nhuggingface_hub's environment variables apply: HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE,\n"
    "HF_HOME / HF_HUB_CACHE, HF_HUB_DISABLE_XET and HTTPS_PROXY / NO_PROXY."
)


def _push_help(name: str) -> str:
    from adapterhub.hub.options import help_text

    text = help_text(name)
    return text[0].upper() + text[1:] + "."


@main.command(epilog=ENVIRONMENT_EPILOG)
@click.argument("repo", metavar="OWNER/REPO[@REVISION]")
@click.option("--name", "-n", metavar="NAME[:TAG]",
              help="Reference to point at the adapter. Default: OWNER/REPO, tagged with the revision "
              "when it is not main.")
@click.option("--subfolder", metavar="PATH", help="Folder of the repo that contains the adapter.")
@click.pass_context
def pull(ctx: click.Context, repo: str, name: str | None, subfolder: str | None) -> None:
    """Import a PEFT adapter from the Hub, downloading only files the store lacks.

    \b
    adapterhub pull someone/style-lora --name style
    adapterhub pull someone/style-lora@v2
    """
    result = open_library(ctx).pull(repo, name=name, subfolder=subfolder)
    if not result.checked:
        click.echo(f"offline: kept the copy of {result.location} pulled at commit "
                   f"{result.commit[:12]} as {result.reference}")
        return
    state = "pulled" if result.created else "already stored"
    click.echo(f"{state} {result.artifact_id[:12]} as {result.reference} from {result.location} "
               f"(commit {result.commit[:12]})")
    click.echo(f"downloaded {len(result.downloaded)} files ({result.downloaded_bytes} bytes), "
               f"reused {len(result.reused)} from the store", err=True)
    for parent in result.missing_parents:
        click.echo(f"parent {parent[:12]} is not in the store, so the lineage link to it is not "
                   "stored; pull or add it, then pull again", err=True)


@main.command(epilog=ENVIRONMENT_EPILOG)
@click.argument("reference", metavar="REF")
@click.argument("repo", metavar="OWNER/REPO")
@click.option("--private", is_flag=True, help=_push_help("private"))
@click.option("--branch", default="main", show_default=True, help=_push_help("branch"))
@click.option("--create-pr", is_flag=True, help=_push_help("create_pr"))
@click.option("--message", "-m", help=_push_help("message"))
@click.option("--force", is_flag=True, help=_push_help("force"))
@click.pass_context
def push(ctx: click.Context, reference: str, repo: str, **values) -> None:
    """Push a stored adapter to the Hub: PEFT files and README.md card in one commit.

    \b
    adapterhub push task+style me/task-plus-style
    adapterhub push task+style me/task-plus-style --create-pr -m "Retrain on v2 data"
    """
    from adapterhub.hub.options import PushOptions

    result = open_library(ctx).push(reference, PushOptions(repo_id=repo, **values))
    if not result.changed:
        click.echo(f"{result.location} already has these files (commit {result.commit[:12]}); "
                   "nothing was pushed")
        return
    click.echo(f"pushed {result.artifact_id[:12]} to {result.location} (commit {result.commit[:12]})")
    click.echo(result.pull_request_url or result.commit_url)


@main.command(epilog=ENVIRONMENT_EPILOG)
@click.argument("references", nargs=-1, metavar="[REF...]")
@click.option("--status", "status_only", is_flag=True,
              help="Only report each state; pull and push nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def sync(ctx: click.Context, references: tuple[str, ...], status_only: bool, as_json: bool) -> None:
    """Compare adapters with their Hub remotes; pull what is behind, push what is ahead.

    Each remote is up to date, behind (the Hub moved), ahead (the local reference moved) or
    diverged (both moved; nothing is changed). Exits with 1 when a remote could not be read
    or moved.
    """
    entries = open_library(ctx).sync(references, status_only=status_only)
    if as_json:
        click.echo(json.dumps([entry.to_dict() for entry in entries], indent=2, sort_keys=True))
    else:
        click.echo(_sync_table(entries))
    if any(entry.failed for entry in entries):
        ctx.exit(1)


@main.command(name="search-hub", epilog=ENVIRONMENT_EPILOG)
@click.argument("query", required=False)
@click.option("--base-model", metavar="MODEL", help="Only adapters of this base model (a Hub model id).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Maximum number of repos to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def search_hub(ctx: click.Context, query: str | None, base_model: str | None, limit: int,
               as_json: bool) -> None:
    """List PEFT adapters on the Hub whose repo id contains QUERY."""
    rows = open_library(ctx).search_hub(query, base_model=base_model, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("no PEFT adapters found on the Hub")
        return
    click.echo(_table(("REPO", "BASE MODEL", "DOWNLOADS", "LIKES"), [
        (row["id"], row["base_model"] or "-", str(row["downloads"] or 0), str(row["likes"] or 0))
        for row in rows
    ]))


def _sync_table(entries) -> str:
    if not entries:
        return "no adapters with a Hub remote; pull or push one first"
    rows = []
    for entry in entries:
        remote = f"{entry.location}" + (f" ({entry.subfolder}/)" if entry.subfolder else "")
        action = "" if entry.action == "none" else entry.action
        rows.append((entry.reference or entry.recorded_artifact[:12], remote, entry.state,
                     "; ".join(part for part in (action, entry.detail) if part) or "-"))
    return _table(("REFERENCE", "REMOTE", "STATE", "ACTION"), rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines
    )
