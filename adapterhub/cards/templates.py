"""Rendering card bodies with Jinja2: the packaged template or the user's own.

The environment uses ``StrictUndefined``, so a template that names a variable the card does not
have fails, and the error names the variable, the template and the line. A user template may
include the packaged sections (``_files.md.j2`` and the other files whose names start with an
underscore), because the packaged folder stays on the search path after the user's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2

from adapterhub.errors import CardError
from adapterhub.render import human_bytes

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_TEMPLATE = "model_card.md.j2"

_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


def render_body(context: dict[str, Any], template: Path | str | None = None) -> str:
    """Render a card body from ``template`` (a file) or the packaged template.

    Raises :class:`CardError` for a missing template, a syntax error and a variable the
    template uses but the card does not define, naming the template and line.
    """
    search_path = [str(TEMPLATES)]
    if template is not None:
        template = Path(template)
        if not template.is_file():
            raise CardError(f"card template {template} not found; pass an existing Jinja2 file",
                            ("template",))
        search_path.insert(0, str(template.parent.resolve()))
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_path),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(cell=table_cell, thousands=lambda n: f"{n:,}", bytes=human_bytes,
                               energy=lambda e: f"{e:.6f}", literal=python_literal)
    name = template.name if template is not None else DEFAULT_TEMPLATE
    try:
        text = environment.get_template(name).render(context)
    except jinja2.UndefinedError as exc:
        variable = _undefined_name(exc)
        raise CardError(
            f"{_location(name, search_path, exc)}: {exc.message}; the variables a card template gets are "
            f"{', '.join(sorted(context))}", (variable,),
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise CardError(f"{exc.filename or name}, line {exc.lineno}: {exc.message}",
                        ("template",)) from exc
    except jinja2.TemplateNotFound as exc:
        raise CardError(f"card template {exc.name} not found in {', '.join(search_path)}",
                        ("template",)) from exc
    return tidy(text)


def table_cell(value: Any) -> str:
    """Format a value for a Markdown table cell: pipes escaped, lines joined."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def python_literal(value: Any) -> str:
    """Write a string, number or list of them as Python source (JSON syntax is valid Python)."""
    return json.dumps(value, ensure_ascii=False)


def tidy(text: str) -> str:
    """Collapse runs of blank lines and end the text with exactly one newline."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    match = _UNDEFINED_NAME.search(exc.message or "")
    return next(group for group in match.groups() if group) if match else "template"


def _location(name: str, search_path: list[str], exc: BaseException) -> str:
    """Return ``template FILE, line N`` from the template frames of a Jinja2 traceback."""
    lineno = None
    filename = name
    traceback = exc.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        # Jinja2 rewrites tracebacks so that template frames carry the template's path.
        if code.co_filename.startswith(tuple(search_path)):
            filename, lineno = code.co_filename, traceback.tb_lineno
        traceback = traceback.tb_next
    where = f"template {filename}"
    return f"{where}, line {lineno}" if lineno is not None else where
