"""What the benchmarks share: a scratch folder that is always removed, stopping a server."""

from __future__ import annotations

import subprocess
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


def stop(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """Stop a server child process: SIGTERM, then SIGKILL after `grace_s` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
