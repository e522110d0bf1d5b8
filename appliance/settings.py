"""Every setting in one place: config.toml, validated, with a unit on every limit.

An absent config.toml means defaults. An unknown key is an error that names the key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8750, ge=1, le=65535)
    auth: Literal["tokens", "none"] = "tokens"
    # Host headers accepted besides the loopback names and `host` itself (DNS rebinding guard).
    allowed_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1 * MiB, ge=1 * KiB)  # bytes per request body
    max_prompt_tokens: int = Field(default=8192, ge=1)  # tokens in one prompt
    max_tokens: int = Field(default=2048, ge=1)  # the largest `max_tokens` a request may ask
    default_max_tokens: int = Field(default=256, ge=1)  # when a request names none
    request_timeout_s: float = Field(default=300.0, gt=0)  # seconds, queueing included
    max_embedding_inputs: int = Field(default=256, ge=1)  # texts in one embeddings request
    # Hostile or broken clients (appliance/api/connections.py): a request's head must arrive
    # in full within header_timeout_s seconds, its body within body_timeout_s seconds of the
    # head; a LAN client needs milliseconds, a 1 MiB body at 35 KB/s needs 30 s.
    header_timeout_s: float = Field(default=10.0, gt=0)  # seconds
    body_timeout_s: float = Field(default=30.0, gt=0)  # seconds
    # open connections at once (far below the open-files limit; then the longest idle one is
    # closed for a new one, and when all are busy a new one gets a 503) and from one client
    # address (an IPv6 client: one /64); a proxy in front is one client: raise it
    max_connections: int = Field(default=512, ge=1)  # connections
    max_connections_per_client: int = Field(default=64, ge=1)  # connections
    # /readyz without a token: "loopback" (a local supervisor; the network needs a token,
    # as for /status) or "never"
    readyz_public: Literal["loopback", "never"] = "loopback"


class RuntimeSettings(_Strict):
    queue_size: int = Field(default=16, ge=1)  # requests waiting per model
    # requests a GGUF model generates at once (continuous batching; 1 = one at a time);
    # each slot has the model's full context_length of KV memory
    slots: int = Field(default=4, ge=1, le=64)
    # tokens of KV memory per slot of a GGUF chat/completion model, at most; 0 = the
    # manifest's context_length. Less memory per slot, shorter prompts + answers.
    context_length: int = Field(default=0, ge=0)
    keep_alive_s: float = Field(default=1800.0, gt=0)  # seconds an idle model stays loaded
    preload: bool = True  # load every active model at start, not on its first request
    refresh_interval_s: float = Field(default=2.0, gt=0)  # seconds between state/inbox checks


class UpstreamSettings(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: Literal["openai", "anthropic"]
    base_url: str
    model: str
    api_key_file: str = ""
    price_input_per_mtok: float = Field(default=0.0, ge=0)  # USD per million tokens
    price_output_per_mtok: float = Field(default=0.0, ge=0)  # USD per million tokens
    ca_file: str = ""
    client_cert: str = ""
    trainable: bool = True
    perimeter: Literal["internal", "external"] = "external"


class OutboxSettings(_Strict):
    """The store-and-forward queue of escalations in state.db."""

    max_items: int = Field(default=100_000, ge=1)  # items waiting or being sent
    max_bytes: int = Field(default=256 * MiB, ge=1 * MiB)  # bytes of waiting or sending items
    when_full: Literal["reject", "drop-oldest"] = "reject"  # drop-oldest: of the lowest priority
    ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)  # seconds an item may wait to be sent
    lease_s: float = Field(default=120.0, gt=0)  # seconds a sender holds an item it took


class SyncSettings(_Strict):
    """Uplink probing and outbox draining."""

    interval_s: float = Field(default=5.0, gt=0)  # seconds between drains while the uplink is up
    probe_interval_s: float = Field(default=30.0, gt=0)  # seconds between probes of an upstream
    probe_timeout_s: float = Field(default=5.0, gt=0)  # seconds
    request_timeout_s: float = Field(default=120.0, gt=0)  # seconds for one upstream answer
    backoff_base_s: float = Field(default=2.0, gt=0)  # seconds before the first retry
    backoff_max_s: float = Field(default=900.0, gt=0)  # the longest wait between retries
    batch: int = Field(default=8, ge=1)  # items taken per drain round
    concurrency: int = Field(default=4, ge=1)  # items of a round in flight at once


class OfflineSettings(_Strict):
    """Sealed batches carried by USB, for sites with no uplink at all (``outbox export``)."""

    name: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")  # card name
    relay_card: str = ""  # on a box: the card file of the relay that sends its batches
    appliance_cards: list[str] = Field(default_factory=list)  # on a relay: the boxes it serves
    batch_items: int = Field(default=500, ge=1)  # items per batch file
    max_batch_bytes: int = Field(default=64 * MiB, ge=64 * KiB)  # bytes per batch file


class TcoSettings(_Strict):
    """What running the box costs, for ``appliance report tco`` (0 = not counted).

    The hardware is counted one of two ways, never both: its purchase price
    (``hardware_price_usd``, CAPEX, spread over ``amortisation_years`` by calendar day, used
    or not: the break-even date) or a cost per hour of model time (``hardware_usd_per_hour``,
    charged per busy second in the ledger, as for rented hardware).
    """

    hardware_usd_per_hour: float = Field(default=0.0, ge=0)  # amortised purchase and upkeep
    power_watts: float = Field(default=0.0, ge=0)  # the box's draw under load, GPU excluded
    electricity_usd_per_kwh: float = Field(default=0.15, ge=0)  # USD per kWh
    gpu_power: bool = True  # add the GPUs' draw from nvidia-smi, when there is one
    hardware_price_usd: float = Field(default=0.0, ge=0)  # USD: what the box cost to buy
    amortisation_years: float = Field(default=3.0, gt=0, le=50)  # years the price is spread over
    in_service: date | None = None  # the first day it served; None: the ledger's first day
    ops_usd_per_month: float = Field(default=0.0, ge=0)  # USD a month: support, space, idle draw

    @model_validator(mode="after")
    def _hardware_counted_once(self) -> TcoSettings:
        if self.hardware_price_usd > 0 and self.hardware_usd_per_hour > 0:
            raise ValueError(
                "give hardware_price_usd (the purchase, spread over amortisation_years) or "
                "hardware_usd_per_hour (per hour of model time), not both: the hardware "
                "would be counted twice"
            )
        return self


class BundleLimits(_Strict):
    """Hard limits applied to every bundle before any byte is trusted."""

    manifest_max_bytes: int = Field(default=1 * MiB, ge=1 * KiB)  # bytes
    signatures_max_bytes: int = Field(default=64 * KiB, ge=1 * KiB)  # bytes
    max_signatures: int = Field(default=16, ge=1)  # signatures per bundle
    max_files: int = Field(default=4096, ge=1)  # payload files per bundle
    max_file_bytes: int = Field(default=64 * GiB, ge=1)  # bytes, one payload file
    max_total_bytes: int = Field(default=128 * GiB, ge=1)  # bytes, all payload files
    copy_chunk_bytes: int = Field(default=4 * MiB, ge=64 * KiB)  # bytes per read while hashing
    clock_skew_s: int = Field(default=300, ge=0)  # seconds tolerated for `created` in the future


class BundleSettings(_Strict):
    usb_paths: list[str] = Field(default_factory=list)  # mount points scanned for *.bundle
    limits: BundleLimits = Field(default_factory=BundleLimits)


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    bundles: BundleSettings = Field(default_factory=BundleSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    offline: OfflineSettings = Field(default_factory=OfflineSettings)
    tco: TcoSettings = Field(default_factory=TcoSettings)
    # the policy file when no policy bundle is active; "" = the packaged policies/default.toml
    policy_file: str = ""

    def trainable_upstreams(self) -> list[str]:
        """The upstreams whose answers are golden (``trainable = true``): what `distill
        export` takes, and what a purge keeps unless told."""
        return [u.name for u in self.upstreams if u.trainable]


def _describe(error: ValidationError, source: Path) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif item["type"] == "missing":
            problems.append(f"'{key}' is missing, and has no default")
        else:
            problems.append(f"'{key}': {item['msg']}")
    return f"{source}: " + "; ".join(problems)


def load_settings(path: Path) -> Settings:
    """Read config.toml; absent means defaults; anything invalid raises ConfigError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from e
