"""Read a policy file: TOML, validated, every problem reported at once with its line.

An operator editing a policy on a field box gets one PolicyError listing every problem, each as
``FILE:LINE: dotted.key: message``, so one round of fixes is enough. The shipped default policy
is found with importlib.resources: the repository's ``policies/`` folder is packaged as
``appliance.policies`` (see pyproject.toml), so the same file serves a source checkout, an
editable install and a wheel.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import typing
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from appliance.errors import PolicyError
from appliance.policy.locate import KeyLines
from appliance.policy.schema import Policy
from appliance.policy_source import DEFAULT_POLICY_FILE, MAX_POLICY_BYTES, shipped_file

_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)|\(at end of document\)")
_MESSAGES = {
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "list_type": "must be an array",
    "tuple_type": "must be an array",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "missing": "missing, and has no default",
}


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy file."""

    source: str
    line: int
    key: str  # dotted, e.g. classes.finance.egress; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def policy_digest(text: str | bytes) -> str:
    """SHA-256 (hex) of the policy file's bytes, so the daemon can say which policy it runs."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy file's text; any problem raises one PolicyError listing all.

    `source` names the file in messages (``source:line: key: message``).
    """
    size = len(text.encode("utf-8"))
    if size > MAX_POLICY_BYTES:
        raise PolicyError(
            f"{source}: {size} bytes is too large for a policy (the limit is {MAX_POLICY_BYTES})"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(str(_toml_problem(e, text, source))) from e
    try:
        raw_classes = data.get("classes")
        context = {"class_names": list(raw_classes)} if isinstance(raw_classes, dict) else None
        policy = Policy.model_validate(data, context=context)
    except ValidationError as e:
        lines = KeyLines(text)
        problems = sorted(
            (_problem(error, lines, source) for error in e.errors()),
            key=lambda p: (p.line, p.key),
        )
        raise PolicyError("\n".join(str(p) for p in problems)) from e
    policy._source = source
    policy._digest = policy_digest(text)
    return policy


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at `path` (at most 1 MiB of UTF-8 TOML)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror or e}") from e
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(
            f"{path}: larger than {MAX_POLICY_BYTES} bytes, too large for a policy file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text (byte {e.start})") from e
    return parse_policy(text, str(path))


def default_policy_path() -> Path:
    """The shipped ``policies/default.toml``, wherever and however the package is installed."""
    return shipped_file(DEFAULT_POLICY_FILE)


def default_policy() -> Policy:
    """The shipped default policy (safe by default: SPEC section 7)."""
    return load_policy(default_policy_path())


# --- turning foreign errors into located problems ---------------------------------------


def _toml_problem(error: tomllib.TOMLDecodeError, text: str, source: str) -> PolicyProblem:
    message = str(error)
    match = _TOML_POSITION.search(message)
    if match is None:
        line = 0
    elif match.group(1):
        line = int(match.group(1))
    else:
        line = text.count("\n") + 1
    return PolicyProblem(source, line, "", f"not valid TOML: {message}")


def _problem(error: ErrorDetails, lines: KeyLines, source: str) -> PolicyProblem:
    loc = [part for part in error["loc"] if part != "[key]"]  # a dict key's own error
    return PolicyProblem(source, lines.line_of(loc), _dotted(loc), _message(error, loc))


def _dotted(loc: list[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            quoted = '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f".{quoted}" if out else quoted
    return out


def _message(error: ErrorDetails, loc: list[str | int]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _keys_of(_type_at(loc[:-1]))
        close = get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key (allowed here: {', '.join(allowed)})" if allowed else "unknown key"
    if kind == "literal_error":
        choices = typing.get_args(_type_at(loc))
        if choices:
            return f"must be one of {', '.join(map(str, choices))} (got {error['input']!r})"
    if kind in ("value_error", "assertion_error"):
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    text = _MESSAGES.get(kind) or error["msg"].replace("Input should be", "must be")
    shown = error.get("input")
    if kind != "missing" and isinstance(shown, str | int | float | bool):
        text += f" (got {shown!r})"
    return text


def _type_at(loc: list[str | int]) -> Any:
    """The declared type at `loc` in the Policy model, None where the path leaves the schema."""
    current: Any = Policy
    for part in loc:
        current = _strip_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == part), None
            )
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) in (tuple, list):
            current = typing.get_args(current)[0]
        else:
            return None
    current = _strip_optional(current)
    while typing.get_origin(current) is typing.Annotated:
        current = typing.get_args(current)[0]
    return current


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if args and type(None) in args and typing.get_origin(annotation) is not Literal:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _keys_of(model: Any) -> list[str]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [field.alias or name for name, field in model.model_fields.items()]
    return []
