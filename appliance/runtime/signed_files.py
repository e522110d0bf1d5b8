"""Verify on load: each file a backend hands to llama.cpp or ONNX Runtime is checked against
its bundle's signed manifest (size and SHA-256) every time it is loaded.

A bundle is verified when it is installed, but its files then stay on disk for months. One
changed afterwards (a disk fault, a mistake, an intruder who made the read-only folder
writable) must not be served, and must not be loaded again at the next start, swap, reload
after an idle unload or restart after a crash. All of those go through a backend's ``load``,
and each backend checks here exactly the files it reads: the GGUF weights and the LoRA
adapter, the ONNX model and its tokenizer. The manifest is the one state.db recorded at
install (its digest is what the signatures cover), not ``manifest.json`` on disk.

What is hashed is what is loaded, as far as the loaders allow:

- each file is opened once (not through a link, and a FIFO or device is refused without
  blocking), its size is compared, and it is hashed through that descriptor;
- ONNX Runtime and tokenizers are given the very bytes that were hashed, from memory;
- llama.cpp only opens paths: it is given ``/proc/self/fd/N``, the inode that was hashed,
  never the path again (a file renamed into place after the check is not what loads), and
  it copies the weights into its own memory (``use_mmap=False``: through a shared mapping, a
  later write to the file would reach the running model). Once it has read them, the
  descriptor is looked at again: a write in between changes the file's ctime, which no one
  can set back, and the load is refused.

The cost is one more read of each file at SHA-256 speed: 0.17 s for the 253 MB Gemma demo
GGUF on the 2-core test box (``scripts/bench_load.py``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.errors import ModelLoadError
from appliance.runtime.backend import ModelSpec, SignedFile

CHUNK_BYTES = 4 * 1024 * 1024  # bytes read per call while hashing
_PROC_FD = Path("/proc/self/fd")


class ModelFileChangedError(ModelLoadError):
    """A file a model loads differs from its bundle's signed manifest, or changed while it
    loaded. (A ModelLoadError: it belongs in appliance.errors' tree beside it.)"""

    def __init__(self, path: Path, file: SignedFile, problem: str) -> None:
        super().__init__(
            f"{file.bundle}: {file.rel} {problem}; it is not loaded (changed since it was "
            "installed: appliance doctor lists every changed file)"
        )
        self.path = path
        self.file = file


def signed_files(bundle: str, payload: Path, manifest: Mapping[str, Any]) -> dict[Path, SignedFile]:
    """The payload files `manifest` lists, by their path under `payload`."""
    return {
        payload / entry["path"]: SignedFile(
            bundle, f"payload/{entry['path']}", int(entry["size"]), str(entry["sha256"])
        )
        for entry in manifest.get("files", [])
    }


class OpenFile:
    """One file opened for a load: its descriptor, and what it was like when it was hashed."""

    def __init__(self, path: Path, signed: SignedFile | None) -> None:
        self.path = path
        self.signed = signed
        self.fd = -1
        self._seen: tuple[int, ...] = ()

    @property
    def loader_path(self) -> str:
        """The path to give a loader that only opens paths: the hashed inode itself."""
        if self.signed is None or not _PROC_FD.is_dir():
            return str(self.path)
        return f"{_PROC_FD}/{self.fd}"

    def _problem(self, problem: str) -> ModelFileChangedError:
        assert self.signed is not None
        return ModelFileChangedError(self.path, self.signed, problem)

    def open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._problem("is missing") from None
        except OSError as e:  # ELOOP: the file was replaced by a link
            raise self._problem(f"cannot be opened ({os.strerror(e.errno or 0)})") from None
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode):
            raise self._problem("is not a regular file")
        assert self.signed is not None
        if info.st_size != self.signed.size:
            raise self._problem(f"has {info.st_size} bytes, not the {self.signed.size} signed")
        self._seen = _identity(info)

    def hash(self) -> None:
        """Hash the file through its descriptor; raise unless it is the signed SHA-256."""
        digest = hashlib.sha256()
        offset = 0
        while block := os.pread(self.fd, CHUNK_BYTES, offset):
            digest.update(block)
            offset += len(block)
        self._check(offset, digest.hexdigest())

    def read(self) -> bytes:
        """The whole file, once, checked: the bytes a loader may be given."""
        chunks = []
        offset = 0
        while block := os.pread(self.fd, CHUNK_BYTES, offset):
            chunks.append(block)
            offset += len(block)
        data = b"".join(chunks)
        if self.signed is not None:
            self._check(len(data), hashlib.sha256(data).hexdigest())
        return data

    def _check(self, size: int, sha256: str) -> None:
        assert self.signed is not None
        if size != self.signed.size:
            raise self._problem(f"changed size while it was read ({size} bytes)")
        if sha256 != self.signed.sha256:
            raise self._problem("does not match its SHA-256 in the signed manifest")

    def check_unchanged(self) -> None:
        """Raise if the file was written to (or replaced at its path) since it was hashed."""
        if self.signed is None:
            return
        if _identity(os.fstat(self.fd)) != self._seen:
            raise self._problem("changed while it was being loaded")
        if self.loader_path == str(self.path):  # no /proc: the loader opened the path again
            try:
                again = _identity(os.stat(self.path))
            except OSError:
                again = ()
            if again != self._seen:
                raise self._problem("was replaced while it was being loaded")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _identity(info: os.stat_result) -> tuple[int, ...]:
    """What any change to a file's bytes or any replacement of it changes."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class VerifiedFiles:
    """The files of one load, each checked against `spec.files`; closed on leaving the block.

    A spec with ``files`` None (not from an installed bundle) is loaded from its paths as
    they are: there is no manifest to hold them to.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._open: list[OpenFile] = []

    def __enter__(self) -> VerifiedFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for file in self._open:
            file.close()
        self._open.clear()

    def _signed(self, path: Path) -> SignedFile | None:
        files = self.spec.files
        if files is None:
            return None
        signed = files.get(path)
        if signed is None:
            root = self.spec.root
            rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
            label = f"{self.spec.name} {self.spec.version}"
            raise ModelFileChangedError(
                path, SignedFile(label, rel, 0, ""), "is not in the signed manifest"
            )
        return signed

    def _opened(self, path: Path) -> OpenFile:
        file = OpenFile(path, self._signed(path))
        self._open.append(file)
        if file.signed is not None:
            file.open()
        return file

    def open(self, path: Path) -> OpenFile:
        """`path` opened and hashed: give its ``loader_path`` to a loader that opens paths,
        then call ``check_unchanged`` once the loader has read it."""
        file = self._opened(path)
        if file.signed is not None:
            file.hash()
        return file

    def read(self, path: Path) -> bytes:
        """`path`'s bytes, checked: give these to the loader (nothing is read twice)."""
        file = self._opened(path)
        if file.signed is None:
            return path.read_bytes()
        return file.read()

    def check_unchanged(self, files: Iterable[OpenFile] | None = None) -> None:
        for file in self._open if files is None else files:
            file.check_unchanged()
