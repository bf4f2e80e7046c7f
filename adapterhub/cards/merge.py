"""Merging a generated card into the card an author already wrote.

adapterhub's part of a card sits between ``BEGIN_MARKER`` and ``END_MARKER``. Rendering again
replaces only that block, so everything the author wrote around it survives. A card without
markers keeps its text and gets the block appended.

Cards made from huggingface_hub's model card template (which PEFT's ``save_pretrained`` uses)
are full of lines such as ``- **Developed by:** [More Information Needed]``. Those lines are not
the author's words, so they are dropped, and so is every section left with no content.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from adapterhub.errors import CardError

BEGIN_MARKER = "<!-- adapterhub:begin -->"
END_MARKER = "<!-- adapterhub:end -->"

PLACEHOLDER = "[More Information Needed]"
# The title huggingface_hub's template gives a card when no model id is passed.
TEMPLATE_TITLE = "# Model Card for Model ID"

_HEADING = re.compile(r"^(#{1,6})\s+\S")
_FENCE = re.compile(r"^\s*(```|~~~)")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# A Jinja2 expression with a default text, as the template writes them: {{ x | default("…", true) }}
_DEFAULTED = re.compile(r'\{\{[^}]*\|\s*default\("([^"]*)",\s*true\)\s*\}\}')


def generated_block(rendered: str) -> str:
    """Return the marked block of a rendered body, or the whole body wrapped in markers."""
    span = marker_span(rendered, "the rendered template")
    if span is None:
        return f"{BEGIN_MARKER}\n{rendered.strip()}\n{END_MARKER}"
    return rendered[span[0]:span[1]]


def marker_span(text: str, source: str) -> tuple[int, int] | None:
    """Return where the marked block lies in ``text`` (markers included), or None.

    Raises :class:`CardError` when only one of the two markers is present.
    """
    begin = text.find(BEGIN_MARKER)
    end = text.find(END_MARKER, begin if begin >= 0 else 0)
    if begin < 0 and end < 0:
        return None
    if begin < 0 or end < 0:
        present, missing = (BEGIN_MARKER, END_MARKER) if begin >= 0 else (END_MARKER, BEGIN_MARKER)
        raise CardError(
            f"{source} has {present} but no {missing} after it; add the missing marker or "
            "remove the other one", ("markers",),
        )
    return begin, end + len(END_MARKER)


def merge_body(existing: str, rendered: str, title: str) -> str:
    """Return the card body: the author's ``existing`` text with the block of ``rendered``.

    With no author text left (none given, or only template placeholders) the result is
    ``rendered`` itself, wrapped in markers when the template wrote none. ``title`` (a
    Markdown H1 line) is put first when the author's text has no H1 of its own.
    """
    span = marker_span(existing, "the existing card")
    block = generated_block(rendered)
    if span is not None:
        return existing[:span[0]] + block + existing[span[1]:]

    author = strip_template_text(existing)
    if not author.strip():
        return rendered if marker_span(rendered, "the rendered template") else f"{block}\n"
    if not any(line.startswith("# ") for line in _outside_fences(author.splitlines())):
        author = f"{title}\n\n{author}"
    return f"{author.rstrip()}\n\n{block}\n"


def strip_template_text(body: str) -> str:
    """Drop template boilerplate lines from a card body, then sections left empty."""
    boilerplate = _template_lines()
    sections: list[tuple[int, list[str]]] = [(0, [])]
    fenced = False
    for line in body.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading:
            sections.append((len(heading.group(1)), [line]))
        elif fenced or not _is_boilerplate(line, boilerplate):
            sections[-1][1].append(line)

    keep = _sections_with_content(sections)
    lines = [line for (_, section), kept in zip(sections, keep) if kept for line in section]
    text = "\n".join(line for line in lines if line.strip() != TEMPLATE_TITLE)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _sections_with_content(sections: list[tuple[int, list[str]]]) -> list[bool]:
    """Mark each section that has content of its own or in a subsection."""
    keep = [False] * len(sections)
    for index, (level, lines) in enumerate(sections):
        own = lines[1:] if level else lines
        if _COMMENT.sub("", "\n".join(own)).strip():
            keep[index] = True
            # A section's content keeps every enclosing heading.
            depth = level
            for parent in range(index - 1, -1, -1):
                parent_level = sections[parent][0]
                if parent_level < depth:
                    keep[parent] = True
                    depth = parent_level
    return keep


def _is_boilerplate(line: str, boilerplate: frozenset[str]) -> bool:
    stripped = line.strip()
    return PLACEHOLDER in stripped or (bool(stripped) and stripped in boilerplate)


def _outside_fences(lines: list[str]) -> list[str]:
    result, fenced = [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            result.append(line)
    return result


@lru_cache(maxsize=1)
def _template_lines() -> frozenset[str]:
    """Return the prose lines huggingface_hub's model card template writes when given nothing.

    These are its fixed lines and its lines whose one variable took the default text, such
    as the stock sentence under "Recommendations". Headings are left out, since authors keep
    the template's headings above their own text.
    """
    import huggingface_hub

    path = Path(huggingface_hub.__file__).parent / "templates" / "modelcard_template.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    lines = set()
    for line in text.splitlines():
        line = _DEFAULTED.sub(lambda match: match.group(1), line).strip()
        if line and line != "---" and not line.startswith("#") and "{{" not in line \
                and "{%" not in line:
            lines.add(line)
    return frozenset(lines)
