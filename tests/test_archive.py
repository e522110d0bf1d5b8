"""The strict ustar container: what pack writes, scan reads back, and standard tar agrees."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from appliance.bundles import archive
from appliance.errors import UnsafeArchiveError
from tests.helpers import read_members, write_raw_bundle, write_source


def test_long_paths_use_the_ustar_prefix(tmp_path: Path):
    deep = "a" * 100 + "/" + "b" * 40 + "/weights.bin"  # 153 characters: needs the prefix
    bundle = write_raw_bundle(tmp_path / "b.bundle", [("payload/" + deep, b"x" * 10)])

    with bundle.open("rb") as f:
        members = archive.scan(f, 10)

    assert list(members) == ["payload/" + deep]
    with tarfile.open(bundle) as standard:  # plain tar tools read bundles too
        assert standard.getnames() == ["payload/" + deep]


def test_base256_size_round_trips():
    size = 9 * 1024**3  # over the 8 GiB octal limit
    block = archive.header("payload/big.gguf", size)
    assert archive._number(block[124:136], "size", "big") == size
    standard = tarfile.TarInfo.frombuf(block, "ascii", "strict")
    assert standard.size == size


def test_pack_writes_manifest_first_and_signatures_last(tmp_path: Path):
    from appliance.bundles.pack import pack

    src = write_source(tmp_path / "src", files={"b.bin": b"b", "a/c.bin": b"c"})
    bundle = tmp_path / "x.bundle"
    pack(src, bundle)

    names = [name for name, _ in read_members(bundle)]

    assert names == ["manifest.json", "payload/a/c.bin", "payload/b.bin", "signatures.json"]


def test_pack_is_reproducible(tmp_path: Path):
    from appliance.bundles.pack import pack

    src = write_source(tmp_path / "src", created="2026-01-01T00:00:00Z")
    pack(src, tmp_path / "one.bundle")
    pack(src, tmp_path / "two.bundle")

    assert (tmp_path / "one.bundle").read_bytes() == (tmp_path / "two.bundle").read_bytes()


def test_pack_refuses_symlinks_in_the_source(tmp_path: Path):
    from appliance.bundles.pack import pack
    from appliance.errors import BundleError

    src = write_source(tmp_path / "src")
    (src / "link.bin").symlink_to("/etc/passwd")

    with pytest.raises(BundleError, match="not a regular file"):
        pack(src, tmp_path / "x.bundle")
    assert not (tmp_path / "x.bundle").exists()


def test_scan_refuses_a_non_ustar_header(tmp_path: Path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    data = bytearray(raw.getvalue())
    data[257:265] = b"\0" * 8  # an old-style (v7) header: no magic
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + 8 * 32 + sum(data[156:512]))
    path = tmp_path / "v7.bundle"
    path.write_bytes(bytes(data))

    with path.open("rb") as f, pytest.raises(UnsafeArchiveError, match="not ustar"):
        archive.scan(f, 10)
