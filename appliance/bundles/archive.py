"""The bundle container: a strict subset of ustar, read and written here.

Python's tarfile follows pax and GNU extension headers, reads them whole into memory and
accepts links and devices; a bundle needs none of that. This reader accepts only regular-file
headers with plain ASCII names and fails closed on everything else, naming the cause, before
any payload byte is read. Sizes of 8 GiB and more use the GNU base-256 number encoding, which
is a fixed-width field and carries no extra data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from appliance.bundles.manifest import check_payload_path
from appliance.errors import ManifestError, TruncatedBundleError, UnsafeArchiveError

BLOCK = 512  # bytes per tar block
MANIFEST = "manifest.json"
SIGNATURES = "signatures.json"
PAYLOAD_PREFIX = "payload/"
MAX_TRAILER_BYTES = 64 * 1024  # zero padding tolerated after the end-of-archive marker
_OCTAL_LIMIT = 8**11  # sizes at or above this need base-256

_REFUSED_TYPES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory entry",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"x": "a pax extended header",
    b"g": "a pax global header",
    b"L": "a GNU long-name header",
    b"K": "a GNU long-link header",
    b"S": "a GNU sparse file",
}


@dataclass(frozen=True)
class Member:
    """A regular file inside the bundle: where its bytes start and how many there are."""

    name: str
    offset: int  # bytes from the start of the file to the first data byte
    size: int  # bytes


def _number(field: bytes, what: str, name: str) -> int:
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] and field[0] & 0x80:
        raise UnsafeArchiveError(f"tar header of '{name}' has a negative {what}")
    text = field.replace(b"\x00", b" ").strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as e:
        raise UnsafeArchiveError(f"tar header of '{name}' has a malformed {what}") from e


def _checksum_ok(header: bytes) -> bool:
    stored_field = header[148:156].replace(b"\x00", b" ").strip()
    try:
        stored = int(stored_field, 8)
    except ValueError:
        return False
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return stored in (unsigned, signed)


def _name(header: bytes) -> str:
    raw_name = header[0:100].split(b"\x00", 1)[0]
    raw_prefix = header[345:500].split(b"\x00", 1)[0]
    raw = raw_prefix + b"/" + raw_name if raw_prefix else raw_name
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise UnsafeArchiveError(f"member name {raw[:60]!r} holds control characters")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise UnsafeArchiveError(f"member name {raw[:60]!r} is not plain ASCII") from e


def _classify(name: str) -> None:
    """Refuse any member name a bundle may not hold."""
    if name in (MANIFEST, SIGNATURES):
        return
    if name.startswith("/"):
        raise UnsafeArchiveError(f"member '{name}' has an absolute path")
    if ".." in name.split("/"):
        raise UnsafeArchiveError(f"member '{name}' climbs out of the bundle with '..'")
    if not name.startswith(PAYLOAD_PREFIX):
        raise UnsafeArchiveError(
            f"unexpected member '{name}' (a bundle holds only {MANIFEST}, {SIGNATURES} "
            f"and {PAYLOAD_PREFIX}…)"
        )
    try:
        check_payload_path(name[len(PAYLOAD_PREFIX) :])
    except ValueError as e:
        raise UnsafeArchiveError(f"member '{name}': {e}") from e


def _check_trailer(f: BinaryIO, position: int, file_size: int) -> None:
    trailer = file_size - position
    if trailer > MAX_TRAILER_BYTES:
        raise UnsafeArchiveError(f"{trailer} bytes follow the end-of-archive marker")
    f.seek(position)
    if f.read(trailer).strip(b"\x00"):
        raise UnsafeArchiveError("data follows the end-of-archive marker")


def scan(f: BinaryIO, max_members: int) -> dict[str, Member]:
    """Index every member by reading headers only; refuse anything hostile or truncated."""
    file_size = os.fstat(f.fileno()).st_size
    members: dict[str, Member] = {}
    folded: set[str] = set()
    position = 0
    while True:
        f.seek(position)
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise TruncatedBundleError(
                "bundle is truncated: it ends without an end-of-archive marker"
            )
        if header == b"\x00" * BLOCK:
            _check_trailer(f, position + BLOCK, file_size)
            break
        if not _checksum_ok(header):
            raise UnsafeArchiveError(f"corrupt tar header at byte {position}")
        if not header[257:262] == b"ustar":
            raise UnsafeArchiveError(f"tar header at byte {position} is not ustar")
        name = _name(header)
        typeflag = header[156:157]
        if typeflag in _REFUSED_TYPES:
            raise UnsafeArchiveError(f"member '{name}' is {_REFUSED_TYPES[typeflag]}")
        if typeflag not in (b"0", b"\x00"):
            raise UnsafeArchiveError(f"member '{name}' has unknown tar type {typeflag!r}")
        _classify(name)
        if name.lower() in folded:
            raise UnsafeArchiveError(f"member '{name}' appears twice")
        if len(members) >= max_members:
            raise UnsafeArchiveError(f"bundle holds more than {max_members} members")
        size = _number(header[124:136], "size", name)
        offset = position + BLOCK
        if offset + size > file_size:
            raise TruncatedBundleError(
                f"bundle is truncated: '{name}' needs {size} bytes, "
                f"{max(0, file_size - offset)} are there"
            )
        folded.add(name.lower())
        members[name] = Member(name, offset, size)
        position = offset + -(-size // BLOCK) * BLOCK
    return members


def read_member(f: BinaryIO, member: Member, max_bytes: int, what: str) -> bytes:
    """Read a small member whole, refusing it from its header size before reading."""
    if member.size > max_bytes:
        raise ManifestError(f"{what} is {member.size} bytes, over its limit of {max_bytes} bytes")
    f.seek(member.offset)
    data = f.read(member.size)
    if len(data) != member.size:
        raise TruncatedBundleError(f"bundle is truncated inside {what}")
    return data


def _size_field(size: int) -> bytes:
    if size < _OCTAL_LIMIT:
        return b"%011o\x00" % size
    return b"\x80" + size.to_bytes(11, "big")  # GNU base-256, for 8 GiB and more


def header(name: str, size: int, mode: int = 0o644) -> bytes:
    """One ustar header block for a regular file (mtime 0, owner 0: reproducible bundles)."""
    encoded = name.encode("ascii")
    prefix = b""
    if len(encoded) > 100:
        cut = encoded.rfind(b"/", 0, 156)
        if cut <= 0 or len(encoded) - cut - 1 > 100:
            raise ValueError(f"path '{name}' cannot be stored in a ustar header")
        prefix, encoded = encoded[:cut], encoded[cut + 1 :]
    size_field = _size_field(size)
    block = bytearray(BLOCK)
    block[0 : len(encoded)] = encoded
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = size_field
    block[136:148] = b"00000000000\x00"
    block[148:156] = b" " * 8
    block[156:157] = b"0"
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def padding(size: int) -> bytes:
    return b"\x00" * (-size % BLOCK)


END_OF_ARCHIVE = b"\x00" * (2 * BLOCK)


def iter_payload(members: dict[str, Member]) -> Iterator[tuple[str, Member]]:
    """Payload members as (path relative to payload/, member)."""
    for name, member in members.items():
        if name.startswith(PAYLOAD_PREFIX):
            yield name[len(PAYLOAD_PREFIX) :], member
