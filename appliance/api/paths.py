"""No filesystem path leaves the box in an HTTP response.

Paths tell a caller on the network who runs the daemon, where it keeps its state and how the
box is laid out; an operator finds them in the daemon's log and in ``appliance status`` at the
box. Error messages are written for operators and often name a file (``cannot load gemma3-270m
1.0.0 from /var/lib/appliance/bundles/…``), so every text that goes into a response passes
``hide_paths`` first: a file of an installed bundle becomes ``model.gguf of bundle gemma3-270m
1.0.0``, APPLIANCE_HOME itself ``$APPLIANCE_HOME``, any other path ``.../its-last-part``.

A path is a ``/`` not preceded by a word character, ``.``, ``:`` or ``/`` (so URLs and ratios
are left alone) whose first part is an entry of this machine's root folder (so ``/v1/models``
is left alone too).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

HOME_TEXT = "$APPLIANCE_HOME"
_CANDIDATE = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;:()\[\]{}<>|]+")
_IN_BUNDLE = re.compile(r"/bundles/([^/.][^/]*)/([^/]+)(?:/(.*))?$")


@functools.cache
def _root_entries() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/"))
    except OSError:
        return frozenset()


def _neutral(path: str, home: str) -> str:
    if home:
        if path == home:
            return HOME_TEXT
        inside = path.startswith(home + "/")
        found = _IN_BUNDLE.match(path[len(home) :]) if inside else None
    else:
        found = _IN_BUNDLE.search(path)
    if found is not None:
        name, version, rest = found.groups()
        bundle = f"bundle {name} {version}"
        return f"{rest.rsplit('/', 1)[-1]} of {bundle}" if rest else bundle
    return ".../" + path.rstrip("/").rsplit("/", 1)[-1]


def hide_paths(text: str, home: Path | None = None) -> str:
    """`text` with every absolute filesystem path replaced by a neutral name."""
    if "/" not in text:
        return text
    root = str(home) if home is not None else ""

    def replace(match: re.Match[str]) -> str:
        found = match.group()
        path = found.rstrip(".")
        first = path[1:].split("/", 1)[0]
        if first not in _root_entries() and not (root and path.startswith(root)):
            return found
        return _neutral(path, root) + found[len(path) :]

    return _CANDIDATE.sub(replace, text)


def hide_paths_in(document: Any, home: Path | None = None) -> Any:
    """A copy of a JSON-like document with `hide_paths` applied to every string in it."""
    if isinstance(document, str):
        return hide_paths(document, home)
    if isinstance(document, dict):
        return {key: hide_paths_in(value, home) for key, value in document.items()}
    if isinstance(document, list | tuple):
        return [hide_paths_in(value, home) for value in document]
    return document
