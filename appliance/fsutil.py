"""Small durable-filesystem helpers: fsync of folders, read-only trees, forced removal."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_read_only(root: Path) -> None:
    """Files 0444, folders 0555, deepest first so the walk can finish."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def remove_tree(root: Path) -> None:
    """Remove a tree even when it was made read-only."""
    if root.is_symlink() or root.is_file():
        root.unlink()
        return
    if not root.exists():
        return
    for folder, _dirs, _files in os.walk(root):
        os.chmod(folder, stat.S_IRWXU)
    shutil.rmtree(root)
