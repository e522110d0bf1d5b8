"""The `appliance` console script: `status` starts fast, everything else loads the full CLI.

``appliance status`` is what checklist scripts and ``--watch`` run over and over; importing
every command (bundles, the daemon, policies …) would cost it most of a second, so it is
dispatched here, before ``appliance.cli`` is imported.
"""

from __future__ import annotations

import sys

_ROOT_FLAGS = frozenset({"--debug"})


def _command(args: list[str]) -> str | None:
    for arg in args:
        if arg in _ROOT_FLAGS:
            continue
        return None if arg.startswith("-") else arg
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if _command(args) == "status" and "--help" not in args:
        from appliance.status.cli import run

        return run(args)
    from appliance.cli import main as full

    return full(args)
