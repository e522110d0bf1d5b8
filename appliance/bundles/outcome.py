"""What a verify or install did: the one document the CLI and the daemon report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from appliance.bundles.records import InstalledBundle
from appliance.bundles.verify import VerifiedManifest


@dataclass(frozen=True)
class Outcome:
    action: str  # "installed", "already-installed" or "verified"
    name: str
    version: str
    sequence: int
    kind: str
    digest: str
    signers: tuple[str, ...]
    files: int
    size: int  # bytes
    active: bool
    seconds: float

    @classmethod
    def of_verified(
        cls, verified: VerifiedManifest, action: str, active: bool, seconds: float
    ) -> Outcome:
        m = verified.manifest
        return cls(
            action,
            m.name,
            m.version,
            m.sequence,
            m.kind,
            verified.digest,
            verified.signers,
            len(m.files),
            m.total_size,
            active,
            seconds,
        )

    @classmethod
    def of_installed(cls, bundle: InstalledBundle, action: str, seconds: float) -> Outcome:
        return cls(
            action,
            bundle.name,
            bundle.version,
            bundle.sequence,
            bundle.kind,
            bundle.digest,
            bundle.signers,
            len(bundle.manifest.get("files", [])),
            bundle.total_size,
            bundle.active,
            seconds,
        )

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["signers"] = list(self.signers)
        document["seconds"] = round(self.seconds, 3)
        return document
