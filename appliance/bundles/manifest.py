"""manifest.json and signatures.json: schema, strict parsing, canonical bytes.

A manifest is accepted only in its canonical encoding (sorted keys, no white space, ASCII), so
there is exactly one byte string per manifest and the signatures cover the very bytes that are
parsed and used. Parsing refuses duplicate keys, NaN/Infinity and anything over its size limit.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.bundles.kinds import KINDS, Kind
from appliance.clock import format_timestamp as format_timestamp  # re-exported
from appliance.errors import ManifestError

SCHEMA_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
HEX64_PATTERN = r"^[0-9a-f]{64}$"
MAX_SEQUENCE = 2**53  # an integer every JSON implementation round-trips exactly
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
MAX_PATH_CHARS = 255  # what a ustar header holds (prefix + name) minus "payload/"
MAX_PATH_DEPTH = 16


def check_payload_path(path: str) -> str:
    """Return `path` if it is a safe relative payload path; raise ValueError naming the flaw."""
    if not path:
        raise ValueError("empty path")
    if path.startswith("/"):
        raise ValueError(f"absolute path '{path}'")
    if "\\" in path or "\x00" in path:
        raise ValueError(f"path '{path!r}' holds a backslash or NUL")
    if len(path) > MAX_PATH_CHARS - len("payload/"):
        raise ValueError(f"path '{path[:40]}…' is longer than {MAX_PATH_CHARS} characters")
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"path '{path}' is deeper than {MAX_PATH_DEPTH} folders")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"path '{path}' has an empty, '.' or '..' component")
        if not _PATH_PART.match(part):
            raise ValueError(f"path '{path}' has a component outside [A-Za-z0-9._+-]")
    return path


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)




class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FileEntry(_Strict):
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=HEX64_PATTERN)

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return check_payload_path(value)


class ModelSection(BaseModel):
    """What the runtime needs to load a model; publishers may add keys of their own."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    format: Literal["gguf", "onnx"]
    role: Literal["chat", "completion", "embedding", "classifier"]
    context_length: int = Field(ge=1, le=1 << 24)
    file: str
    chat_template: str | None = None


class KeyringKey(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    public: str = Field(pattern=HEX64_PATTERN)  # raw Ed25519 public key, hex


class KeyringSection(_Strict):
    threshold: int = Field(ge=1)
    keys: list[KeyringKey] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> KeyringSection:
        publics = [k.public for k in self.keys]
        if len(set(publics)) != len(publics):
            raise ValueError("keyring lists the same key twice")
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(self.keys)} keys listed")
        return self


class RevocationSection(_Strict):
    keys: list[str] = Field(default_factory=list, max_length=1024)  # key ids
    bundles: list[str] = Field(default_factory=list, max_length=4096)  # manifest digests

    @field_validator("keys", "bundles")
    @classmethod
    def _hex(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(HEX64_PATTERN, value):
                raise ValueError(f"'{value[:70]}' is not a lowercase SHA-256 hex digest")
        return values


class Manifest(_Strict):
    schema_: int = Field(alias="schema")
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    sequence: int = Field(ge=1, le=MAX_SEQUENCE)
    kind: Kind
    created: str = Field(pattern=TIMESTAMP_PATTERN)
    expires: str | None = Field(default=None, pattern=TIMESTAMP_PATTERN)
    requires: str = ""
    description: str = Field(default="", max_length=1024)
    files: list[FileEntry]
    model: ModelSection | None = None
    keyring: KeyringSection | None = None
    revocation: RevocationSection | None = None

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"schema {value} is not supported (this runtime reads {SCHEMA_VERSION})"
            )
        return value

    @field_validator("created", "expires")
    @classmethod
    def _real_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_timestamp(value)
        return value

    @field_validator("requires")
    @classmethod
    def _specifier(cls, value: str) -> str:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(value)
        except InvalidSpecifier as e:
            raise ValueError(f"'{value}' is not a version range such as '>=0.1,<2'") from e
        return value

    @model_validator(mode="after")
    def _sections_match_kind(self) -> Manifest:
        paths = [f.path for f in self.files]
        folded = {p.lower() for p in paths}
        if len(folded) != len(paths):
            raise ValueError("files lists the same path twice (paths compare case-insensitively)")
        for path in paths:
            parts = path.lower().split("/")
            for depth in range(1, len(parts)):
                prefix = "/".join(parts[:depth])
                if prefix in folded:
                    raise ValueError(f"path '{path}' lies inside the listed file '{prefix}'")
        rules = KINDS[self.kind]
        sections = {"model": self.model, "keyring": self.keyring, "revocation": self.revocation}
        for section, value in sections.items():
            if rules.required_section == section and value is None:
                raise ValueError(f"a {self.kind} bundle needs a '{section}' section")
            if value is not None and section not in rules.allowed_sections:
                raise ValueError(f"a {self.kind} bundle must not have a '{section}' section")
        if rules.required_file is not None and rules.required_file not in paths:
            raise ValueError(f"a {self.kind} bundle carries its policy as '{rules.required_file}'")
        if self.model is not None and self.model.file not in paths:
            raise ValueError(f"model.file '{self.model.file}' is not one of the listed files")
        if self.expires is not None and self.expires <= self.created:
            raise ValueError("expires is not after created")
        return self

    @property
    def created_at(self) -> datetime:
        return parse_timestamp(self.created)

    @property
    def expires_at(self) -> datetime | None:
        return None if self.expires is None else parse_timestamp(self.expires)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json_obj(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Signature(_Strict):
    keyid: str = Field(pattern=HEX64_PATTERN)
    sig: str = Field(pattern=r"^[0-9a-f]{128}$")


class Signatures(_Strict):
    signatures: list[Signature]


def canonical_bytes(obj: Any) -> bytes:
    """The one byte string a JSON document is signed and stored as."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def digest(manifest_bytes: bytes) -> str:
    """A bundle's identity: SHA-256 of its canonical manifest bytes, hex."""
    return hashlib.sha256(manifest_bytes).hexdigest()


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError(f"duplicate JSON key '{key[:64]}'")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ManifestError(f"JSON constant {name} is not allowed")


def load_strict_json(raw: bytes, what: str, max_bytes: int) -> Any:
    """Parse JSON refusing oversize input, duplicate keys, NaN/Infinity and bad UTF-8."""
    if len(raw) > max_bytes:
        raise ManifestError(f"{what} is {len(raw)} bytes, over its limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
        return json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except ManifestError as e:
        raise ManifestError(f"{what}: {e.message}") from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from e


def _first_problem(error: ValidationError, what: str) -> str:
    item = error.errors()[0]
    where = ".".join(str(p) for p in item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = "unknown field"
    elif item["type"] == "missing":
        message = "missing"
    return f"{what}: {where + ': ' if where else ''}{message}"


def parse_manifest(raw: bytes, max_bytes: int) -> Manifest:
    """Parse manifest.json bytes; they must be canonical and valid, else ManifestError."""
    obj = load_strict_json(raw, "manifest.json", max_bytes)
    if not isinstance(obj, dict):
        raise ManifestError("manifest.json is not a JSON object")
    if canonical_bytes(obj) != raw:
        raise ManifestError("manifest.json is not in canonical form (sorted keys, no spaces)")
    try:
        return Manifest.model_validate(obj)
    except ValidationError as e:
        raise ManifestError(_first_problem(e, "manifest.json")) from e


def parse_signatures(raw: bytes, max_bytes: int, max_count: int) -> Signatures:
    obj = load_strict_json(raw, "signatures.json", max_bytes)
    try:
        parsed = Signatures.model_validate(obj)
    except ValidationError as e:
        raise ManifestError(_first_problem(e, "signatures.json")) from e
    if len(parsed.signatures) > max_count:
        raise ManifestError(f"signatures.json holds more than {max_count} signatures")
    return parsed


def manifest_from_fields(fields: dict[str, Any]) -> Manifest:
    """Validate a manifest built by a publisher's tool (pack) rather than read from a bundle."""
    try:
        return Manifest.model_validate(fields)
    except ValidationError as e:
        raise ManifestError(_first_problem(e, "manifest")) from e
