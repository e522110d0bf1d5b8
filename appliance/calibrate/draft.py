"""``--write-policy FILE``: the policy in force with the recommended threshold, as a draft.

The box never changes its own policy: the draft is a file for the operator to read, sign
(``appliance bundle pack`` + ``bundle sign`` as a ``kind = "policy"`` bundle) and install as
usual. Only ``confidence_threshold`` in the ``[cascade]`` table changes (its comment and every
other line stay as they were); a comment above it says where the number came from. The draft
is validated as a policy and must read back with the new threshold, or nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from appliance.calibrate.errors import CalibrationError
from appliance.errors import PolicyError
from appliance.fsutil import replacing
from appliance.policy.load import parse_policy

_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]\s*(#.*)?$")
_THRESHOLD = re.compile(r"^(\s*confidence_threshold\s*=\s*)([^#\s]+)(.*)$")


def with_threshold(text: str, threshold: float, note: str) -> str:
    """`text` (a policy file) with ``cascade.confidence_threshold = threshold``."""
    lines = text.splitlines()
    value = f"{threshold:g}"
    comment = f"# {note}"
    start = next(
        (i for i, line in enumerate(lines) if (m := _TABLE.match(line)) and m[1] == "cascade"),
        None,
    )
    if start is None:
        lines += ["", "[cascade]", comment, f"confidence_threshold = {value}"]
        return "\n".join(lines) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if _TABLE.match(lines[i])), len(lines))
    for i in range(start + 1, end):
        match = _THRESHOLD.match(lines[i])
        if match:
            lines[i : i + 1] = [comment, f"{match[1]}{value}{match[3]}"]
            return "\n".join(lines) + "\n"
    lines[start + 1 : start + 1] = [comment, f"confidence_threshold = {value}"]
    return "\n".join(lines) + "\n"


def write_draft(source: Path, out: Path, threshold: float, note: str) -> None:
    """Write the draft of `source` with `threshold` to `out` (atomically; never `source`)."""
    if out.exists() and out.resolve() == source.resolve():
        raise CalibrationError(
            f"--write-policy {out} is the policy in force: write the draft elsewhere, then "
            "sign and install it"
        )
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"cannot read the policy {source}: {e}") from e
    draft = with_threshold(text, threshold, note)
    try:
        policy = parse_policy(draft, str(out))
    except PolicyError as e:
        raise CalibrationError(f"the draft would not be a valid policy: {e}") from e
    if policy.cascade.confidence_threshold != float(f"{threshold:g}"):
        raise CalibrationError(
            f"could not set confidence_threshold in {source} (written another way than "
            "'[cascade]' and 'confidence_threshold = ...'): edit it by hand"
        )
    try:
        with replacing(out) as f:
            f.write(draft.encode("utf-8"))
    except OSError as e:
        raise CalibrationError(f"cannot write {out}: {e.strerror or e}") from e
