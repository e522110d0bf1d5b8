"""What the benchmarks share: a scratch folder that is always removed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.fsutil import remove_tree


@contextmanager
def scratch(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """A fresh folder under `workdir` (default /var/tmp: on disk, not tmpfs), removed after."""
    parent = workdir
    if parent is None:
        parent = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield folder
    finally:
        remove_tree(folder)
        print(f"\nremoved {folder}")
