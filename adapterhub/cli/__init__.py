"""The ``adapterhub`` command line: each command converts its arguments, makes one call into
:class:`adapterhub.library.Library` and prints the result. Commands live in one module per
area (``store_commands``, ``compose_commands``) and register on :func:`main`.

Errors raised on purpose by adapterhub or the store print as ``Error: …`` with exit code 1;
invalid option values exit with 2, like click's own usage errors. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

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


def open_library(ctx: click.Context, create: bool = True):
    """Return the Library for the store chosen by ``--home``; opened on first use."""
    from adapterhub.library import Library

    library = Library.open(ctx.obj["home"], create=create)
    # Closing the index when the command ends checkpoints SQLite's WAL right away.
    ctx.call_on_close(library.close)
    return library


def report_stored(verb: str, artifact_id: str, reference: str | None, replaced: str | None) -> None:
    """Print what was stored and under which name, and warn about unnamed or moved adapters."""
    suffix = f" as {reference}" if reference else ""
    click.echo(f"{verb} {artifact_id[:12]}{suffix}")
    if replaced:
        click.echo(f"note: {reference} pointed at {replaced[:12]} before; that adapter stays "
                   "stored until gc, unless another name points at it "
                   f"(adapterhub tag sha256:{replaced[:12]} NAME)", err=True)
    elif reference is None:
        click.echo(f"note: the adapter has no name, so gc deletes it after an hour; name it "
                   f"with: adapterhub tag sha256:{artifact_id[:12]} NAME", err=True)


# The command modules register themselves on ``main`` when imported.
from adapterhub.cli import card_commands, compose_commands, store_commands  # noqa: E402,F401
from adapterhub.cli import hub_commands  # noqa: E402,F401
