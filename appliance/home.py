"""Where the appliance keeps its state: APPLIANCE_HOME and the layout inside it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import HomeError

ENV_VAR = "APPLIANCE_HOME"
SYSTEM_HOME = Path("/var/lib/appliance")
USER_HOME = Path("~/.local/share/appliance")


def resolve_home(environ: Mapping[str, str] | None = None) -> Path:
    """$APPLIANCE_HOME, else /var/lib/appliance for root, else ~/.local/share/appliance."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser().absolute()
    if os.geteuid() == 0:
        return SYSTEM_HOME
    return USER_HOME.expanduser()


@dataclass(frozen=True)
class Home:
    """The folder layout of SPEC section 3. Names may grow, never change."""

    root: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Home:
        return cls(resolve_home(environ))

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def trust_policy_file(self) -> Path:
        return self.trust_dir / "trust.toml"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def staging_dir(self) -> Path:
        # Inside bundles/ so that staging and the final folder share one filesystem
        # and the publishing rename is atomic.
        return self.bundles_dir / ".staging"

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def inbox_dir(self) -> Path:
        return self.root / "inbox"

    @property
    def daemon_file(self) -> Path:
        """Where a running `appliance serve` says its address and pid (``runfile``)."""
        return self.root / "daemon.json"

    def bundle_dir(self, name: str, version: str) -> Path:
        return self.bundles_dir / name / version

    def ensure(self) -> Home:
        """Create the layout if missing; refuse a home that is not a usable folder.

        A new home is 0700 whatever the umask: state.db holds prompts and token hashes, and
        the bundles are what the box runs. An existing home keeps its mode: the operator made
        it so (``appliance doctor`` checks who can write it).
        """
        try:
            new = not os.path.lexists(self.root)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if new:
                os.chmod(self.root, 0o700)  # mkdir's mode is cut by the umask
            for folder in (self.trust_dir, self.bundles_dir, self.inbox_dir):
                folder.mkdir(exist_ok=True)
            self.staging_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise HomeError(f"cannot use {self.root} as APPLIANCE_HOME: {e.strerror}") from e
        if not os.access(self.root, os.W_OK):
            raise HomeError(f"APPLIANCE_HOME {self.root} is not writable by this user")
        return self
