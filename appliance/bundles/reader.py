"""One bundle file, opened once: every byte that is verified or staged comes through it.

The file is opened a single time; the headers are scanned, ``manifest.json`` and
``signatures.json`` read under their limits, and later the payload is hashed (and, for an
install, copied) through the same handle, so what was verified is what gets used.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from appliance.bundles import archive
from appliance.bundles.manifest import Manifest
from appliance.bundles.payload import Progress, check_declared_size, hash_member, reporter
from appliance.errors import BundleError, MalformedBundleError
from appliance.fsutil import NotRegularFileError, open_regular
from appliance.settings import BundleLimits


class BundleReader:
    def __init__(self, path: Path, limits: BundleLimits) -> None:
        try:
            self.file = open_regular(path)  # a FIFO must not block an install (issue 14)
        except FileNotFoundError as e:
            raise BundleError(f"bundle file {path} does not exist") from e
        except NotRegularFileError as e:
            raise BundleError(f"bundle file {e}") from e
        except OSError as e:
            raise BundleError(f"cannot read bundle file {path}: {e.strerror}") from e
        self.limits = limits
        try:
            self.members = archive.scan(self.file, limits.max_files + 2)
            for required in (archive.MANIFEST, archive.SIGNATURES):
                if required not in self.members:
                    raise MalformedBundleError(f"bundle has no {required}")
            self.manifest_raw = archive.read_member(
                self.file,
                self.members[archive.MANIFEST],
                limits.manifest_max_bytes,
                "manifest.json",
            )
            self.signatures_raw = archive.read_member(
                self.file,
                self.members[archive.SIGNATURES],
                limits.signatures_max_bytes,
                "signatures.json",
            )
        except BaseException:
            self.file.close()
            raise

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def check_listing(self, manifest: Manifest) -> None:
        """The tar must hold exactly the listed files, none larger than declared."""
        listed = {entry.path: entry for entry in manifest.files}
        present = set()
        for path, member in archive.iter_payload(self.members):
            entry = listed.get(path)
            if entry is None:
                raise MalformedBundleError(f"payload/{path} is not listed in the manifest")
            check_declared_size(entry, member)
            present.add(path)
        missing = sorted(set(listed) - present)
        if missing:
            raise MalformedBundleError(
                f"payload/{missing[0]} is listed in the manifest but missing"
            )

    def copy_payload(
        self, manifest: Manifest, dest_root: Path | None, progress: Progress | None = None
    ) -> set[Path]:
        """Hash every payload file; with `dest_root`, write each to it as it is hashed.

        Returns the folders created under `dest_root` (for the caller to fsync).
        """
        folders: set[Path] = set()
        advance = reporter(progress, manifest.total_size)
        with ThreadPoolExecutor(max_workers=1) as pool:
            for entry in manifest.files:
                member = self.members[archive.PAYLOAD_PREFIX + entry.path]
                if dest_root is None:
                    hash_member(
                        self.file,
                        member,
                        entry,
                        dest=None,
                        pool=pool,
                        chunk_bytes=self.limits.copy_chunk_bytes,
                        progress=advance,
                    )
                    continue
                target = dest_root / entry.path
                for parent in reversed(target.relative_to(dest_root).parents[:-1]):
                    folder = dest_root / parent
                    if folder not in folders:
                        folder.mkdir()
                        folders.add(folder)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(target, flags, 0o600)
                with os.fdopen(fd, "wb", buffering=0) as dest:
                    hash_member(
                        self.file,
                        member,
                        entry,
                        dest=dest,
                        pool=pool,
                        chunk_bytes=self.limits.copy_chunk_bytes,
                        progress=advance,
                    )
                    os.fsync(fd)
        return folders
