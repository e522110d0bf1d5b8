"""A GGUF file's metadata and tensor table, read from the header alone (no weights loaded).

The `gguf` library supplies the format's constants (value types, each tensor type's block
size and bytes); the walk over the header is ours because ``gguf.GGUFReader`` decodes every
value, and the demo model's 262k-token vocabulary then takes over 10 s on a 2-core box
(this reads it in a fraction of a second: string arrays are skipped, only their length kept).
Every length read from the file is checked against the file's size before it is used, so a
truncated or hostile header is a ValueError, never a huge allocation.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # bytes; general.alignment overrides it
MAX_DECODED_ARRAY = 4096  # numeric arrays up to this many items are decoded, longer ones counted

_SCALAR = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}

Value = int | float | bool | str | list[int | float | bool]


@dataclass(frozen=True)
class ArrayLength:
    """A long or string array in the header: only how many items it holds."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml order: innermost first
    type_name: str  # F32, Q4_K, ...
    offset: int  # from the start of the data section
    n_bytes: int  # its size in the file

    @property
    def n_elements(self) -> int:
        count = 1
        for d in self.dims:
            count *= d
        return count


@dataclass(frozen=True)
class GgufFile:
    path: Path
    version: int
    metadata: dict[str, Value | ArrayLength]
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where the tensor data starts in the file
    file_size: int

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def tensor_nbytes(type_name: str, n_elements: int) -> int:
    """Bytes of `n_elements` values of ggml type `type_name` (whole blocks)."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return int((n_elements + block - 1) // block * size)


def _scalar_format(kind: int) -> str:
    try:
        return _SCALAR[GGUFValueType(kind)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown GGUF value type {kind}") from None


def read_gguf(path: Path) -> GgufFile:
    """The header of the GGUF file `path`. ValueError if it is not a well-formed GGUF."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise ValueError("not a GGUF file (too short)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _Walker(m, size, path).read()


class _Walker:
    def __init__(self, m: mmap.mmap, size: int, path: Path) -> None:
        self.m, self.size, self.path, self.pos = m, size, path, 0

    def need(self, length: int) -> None:
        if length < 0 or self.pos + length > self.size:
            raise ValueError("the header runs past the end of the file")

    def unpack(self, fmt: str) -> tuple[int | float | bool, ...]:
        length = struct.calcsize(fmt)
        self.need(length)
        values = struct.unpack_from(fmt, self.m, self.pos)
        self.pos += length
        return values

    def u32(self) -> int:
        return int(self.unpack("<I")[0])

    def u64(self) -> int:
        return int(self.unpack("<Q")[0])

    def string(self) -> str:
        length = self.u64()
        self.need(length)
        text = bytes(self.m[self.pos : self.pos + length]).decode("utf-8", errors="replace")
        self.pos += length
        return text

    def value(self, kind: int) -> Value | ArrayLength:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            return self.array()
        return self.unpack(_scalar_format(kind))[0]

    def array(self) -> list[int | float | bool] | ArrayLength:
        item, count = self.u32(), self.u64()
        if item in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            self.need(8 * count)  # each item takes 8 bytes at least: a hostile count stops here
            for _ in range(count):
                self.value(item)
            return ArrayLength(count)
        fmt = _scalar_format(item)
        width = struct.calcsize(fmt)
        self.need(width * count)
        if count > MAX_DECODED_ARRAY:
            self.pos += width * count
            return ArrayLength(count)
        values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.m, self.pos))
        self.pos += width * count
        return values

    def read(self) -> GgufFile:
        if bytes(self.m[:4]) != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        self.pos = 4
        version, n_tensors, n_kv = self.u32(), self.u64(), self.u64()
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        if n_tensors > self.size or n_kv > self.size:
            raise ValueError("the header counts more entries than the file holds")
        metadata: dict[str, Value | ArrayLength] = {}
        for _ in range(n_kv):
            key = self.string()
            metadata[key] = self.value(self.u32())
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = self.string()
            n_dims = self.u32()
            if not 1 <= n_dims <= 4:  # ggml tensors have 1 to 4 dimensions
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = tuple(int(d) for d in self.unpack(f"<{n_dims}Q"))
            raw.append((name, dims, self.u32(), self.u64()))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"general.alignment is {alignment!r}")
        data_offset = (self.pos + alignment - 1) // alignment * alignment
        tensors = tuple(self._tensor(entry, data_offset) for entry in raw)
        return GgufFile(self.path, version, metadata, tensors, data_offset, self.size)

    def _tensor(self, entry: tuple[str, tuple[int, ...], int, int], data_offset: int) -> TensorInfo:
        name, dims, kind, offset = entry
        try:
            type_name = GGMLQuantizationType(kind).name
        except ValueError:
            raise ValueError(f"tensor {name} has unknown type {kind}") from None
        count = 1
        for d in dims:
            count *= d
        info = TensorInfo(name, dims, type_name, offset, tensor_nbytes(type_name, count))
        if data_offset + offset + info.n_bytes > self.size:
            raise ValueError(f"tensor {name} runs past the end of the file")
        return info
