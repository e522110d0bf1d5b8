"""Every bundle kind in one table: what its payload must hold, what installing it does,
and what activating it means.

Read a row to learn a kind; the manifest schema, the verifier, the installer and the
doctor consult this table instead of spelling out kinds themselves.

- ``model`` (a ``[model]`` section): served by the runtime under its name once active;
- ``adapter`` (``[model]`` optional): a LoRA served on top of its base model once active;
- ``policy`` (``policy.toml``, which must parse): the daemon governs requests by it;
- ``keyring`` (``[keyring]``, signed by its own new keys too): replaces the trust store on
  install;
- ``revocation`` (``[revocation]``): its key ids and bundle digests are never trusted again,
  from install on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.policy_source import POLICY_FILE

Kind = Literal["model", "policy", "adapter", "keyring", "revocation"]
Section = Literal["model", "keyring", "revocation"]


@dataclass(frozen=True)
class KindRules:
    """The rules of one bundle kind."""

    required_section: Section | None  # the manifest section the kind must carry
    allowed_sections: tuple[Section, ...]  # the sections it may carry (the required one too)
    required_file: str | None  # a payload file it must list
    activatable: bool  # has an active version (activate, rollback); else acts on install
    runtime_files: bool  # its payload is handed to the model runtime (verified on each load)
    own_threshold: bool  # must also be signed by the threshold of the keys it brings
    activation: str  # what activating (or, for the others, installing) it does


KINDS: dict[str, KindRules] = {
    "model": KindRules(
        "model", ("model",), None, True, True, False, "the runtime serves it under its name"
    ),
    "adapter": KindRules(
        None, ("model",), None, True, True, False, "the runtime serves its base model with it"
    ),
    "policy": KindRules(
        None, (), POLICY_FILE, True, False, False, "the daemon governs requests by it"
    ),
    "keyring": KindRules(
        "keyring", ("keyring",), None, False, False, True, "installing it replaces the trust store"
    ),
    "revocation": KindRules(
        "revocation",
        ("revocation",),
        None,
        False,
        False,
        False,
        "installing it revokes its key ids and bundle digests for good",
    ),
}

ACTIVATABLE_KINDS: tuple[str, ...] = tuple(k for k, r in KINDS.items() if r.activatable)
RUNTIME_KINDS: tuple[str, ...] = tuple(k for k, r in KINDS.items() if r.runtime_files)
