"""Reports as CSV for a spreadsheet: a header row, then one row per entry, written atomically.

A text cell that starts with ``=``, ``+``, ``-`` or ``@`` is prefixed with ``'``: a
spreadsheet would otherwise run it as a formula (a device or class name is text an operator
chose, not a formula). Numbers are written as Python prints them; None is an empty cell.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.fsutil import replacing

_FORMULA = ("=", "+", "-", "@")


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def text(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """The CSV text of `rows` (only `columns`, in that order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def write(rows: Sequence[Mapping[str, object]], columns: Sequence[str], out: Path) -> None:
    """`rows` as CSV at `out`; a failed write leaves no partial file (nor replaces a good one)."""
    data = text(rows, columns).encode("utf-8")
    with replacing(out) as f:
        f.write(data)
