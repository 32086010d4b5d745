"""A report table as the page shows it: short headers whose words never break, figures written
from row values, an empty cell that says why, and no column empty in every row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
NOT_MEASURED = "not measured"
NO_BREAK_HYPHEN = "\u2011"
# a metric's direction after its name, on the same header line (a no-break space before it)
UP, DOWN = "\u00a0\u2191", "\u00a0\u2193"


@dataclass(frozen=True)
class Column:
    """One column: ``label`` over ``sub`` in its header, ``title`` (the full name and direction) on
    hover; ``value`` reads a row, ``fmt`` writes it. An empty cell says ``NOT_MEASURED`` with
    ``missing`` on hover, "—" for the dense run where ``on_reference`` (a comparison with itself),
    or what ``blank`` returns for the row (text, hover) where it returns something."""

    label: str
    sub: str
    title: str
    value: Callable[[Row], Any]
    fmt: str = "{}"
    text: bool = False  # words, left-aligned, rather than a figure
    missing: str = "no measurement for this configuration"
    on_reference: bool = False
    blank: Callable[[Row], tuple[str, str] | None] | None = None
    tone: Callable[[Row], str] | None = None  # a filled cell's class (red / green)


def header_words(text: str) -> str:
    """``text`` with breaks allowed between words only: underscores become spaces and hyphens
    non-breaking (a browser would otherwise break ``top-1`` after its hyphen)."""
    return text.replace("_", " ").replace("-", NO_BREAK_HYPHEN)


def _cell(column: Column, row: Row) -> dict[str, Any]:
    value = column.value(row)
    cls = "text" if column.text else ""
    if value is not None:
        tone = column.tone(row) if column.tone else ""
        return {"text": column.fmt.format(value), "sort": value, "cls": f"{cls} {tone}".strip(), "title": ""}
    why = column.blank(row) if column.blank else None
    if why is None:
        reference = column.on_reference and row["reference"]
        why = ("—", "the dense run, the one compared with") if reference else (NOT_MEASURED, column.missing)
    return {"text": why[0], "sort": "", "cls": f"{cls} blank".strip(), "title": why[1]}


def grid(columns: list[Column], rows: list[Row]) -> dict[str, Any]:
    """The columns that some row fills (headers and classes) and each row's cells in their order."""
    kept = [c for c in columns if any(c.value(r) is not None for r in rows)]
    heads = [
        {
            "label": header_words(c.label),
            "sub": header_words(c.sub),
            "title": c.title,
            "cls": "text" if c.text else "",
        }
        for c in kept
    ]
    return {"columns": heads, "rows": [[_cell(c, r) for c in kept] for r in rows]}
