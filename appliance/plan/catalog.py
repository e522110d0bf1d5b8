"""The hardware catalog: the shipped ``hardware.toml`` plus the operator's own entries.

``APPLIANCE_HOME/hardware.toml`` (or ``--catalog FILE``) holds entries with the same fields;
one named like a shipped entry replaces it. A bad entry is refused with its file and field.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ConfigError

HOURS_PER_YEAR = 8760


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["gpu", "soc", "cpu"]
    memory_gib: float = Field(gt=0)  # GPU memory (gpu), shared memory (soc), RAM (cpu)
    memory_type: str = ""
    bandwidth_gbs: float = Field(gt=0)  # GB/s (10^9 bytes)
    fp16_tflops: float = Field(gt=0)  # dense peak: what prefill is sized from
    tdp_watts: float = Field(ge=0)
    decode_efficiency: float = Field(gt=0, le=1)  # share of peak bandwidth decode reaches
    us_per_layer: float = Field(ge=0)  # fixed microseconds per layer per generated token
    prefill_efficiency: float = Field(default=0.4, gt=0, le=1)  # share of peak FLOPS
    host_memory_gib: float = Field(default=0, ge=0)  # RAM beside a GPU (0: not stated)
    usd_per_hour: float = Field(default=0, ge=0)  # reference only (see hardware.toml)
    price_source: str = ""
    price_date: str = ""
    amortize_years: float = Field(default=0, ge=0)
    reference_tg128: float | None = None  # published llama.cpp tokens/s, Llama-2-7B Q4_0
    measured: bool = False  # figures measured on this box rather than taken from a sheet

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


def _entries(text: str, origin: str) -> list[Hardware]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin} is not valid TOML: {e}") from e
    unknown = set(document) - {"hardware"}
    if unknown:
        raise ConfigError(f"{origin}: unknown key {sorted(unknown)[0]} (only [[hardware]] tables)")
    entries = []
    for i, table in enumerate(document.get("hardware", [])):
        try:
            entries.append(Hardware.model_validate(table))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            label = table.get("name", f"entry {i + 1}") if isinstance(table, dict) else i + 1
            raise ConfigError(f"{origin}: hardware {label}: {where}: {first['msg']}") from e
    return entries


def shipped() -> list[Hardware]:
    text = resources.files("appliance.plan").joinpath("hardware.toml").read_text("utf-8")
    return _entries(text, "the shipped hardware.toml")


def load_catalog(*extra: Path) -> list[Hardware]:
    """The shipped catalog, each file of `extra` (that exists) laid over it by name."""
    by_name = {h.name: h for h in shipped()}
    for path in extra:
        if not path.is_file():
            continue
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
        for entry in _entries(text, str(path)):
            by_name[entry.name] = entry
    return list(by_name.values())


def find(catalog: list[Hardware], name: str) -> Hardware:
    """The entry called `name` (case-insensitive, a unique prefix will do)."""
    wanted = name.lower()
    exact = [h for h in catalog if h.name.lower() == wanted]
    matches = exact or [h for h in catalog if h.name.lower().startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(h.name for h in (matches or catalog))
    problem = "is ambiguous" if matches else "is not in the catalog"
    raise ConfigError(f"hardware {name!r} {problem}: {names}")
