"""`appliance bundle …`: pack, sign, verify, install and switch signed bundles."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from appliance.bundles import pack as packer
from appliance.bundles.installer import BundleManager
from appliance.bundles.outcome import Outcome
from appliance.bundles.records import InstalledBundle
from appliance.cli.common import JSON_OPTION, console, err_console, home, print_json

app = typer.Typer(help="Pack, sign, verify and install signed bundles.", no_args_is_help=True)


@contextmanager
def _manager() -> Iterator[BundleManager]:
    manager = BundleManager(home())
    try:
        yield manager
    finally:
        manager.close()


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while payload bytes are hashed (not with --json or no TTY)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _print_outcome(outcome: Outcome) -> None:
    verb = {
        "installed": "installed",
        "already-installed": "verified; already installed (nothing changed)",
        "verified": "verified: would install",
    }[outcome.action]
    console.print(f"{outcome.name} {outcome.version}: {verb}")
    console.print(
        f"  kind {outcome.kind}, sequence {outcome.sequence}, {outcome.files} file(s), "
        f"{_size(outcome.size)}, {outcome.seconds:.2f} s"
    )
    console.print(f"  signed by {', '.join(k[:16] for k in outcome.signers)}")
    if outcome.action == "installed":
        console.print("  active" if outcome.active else "  installed, not active")


@app.command("pack")
def pack(
    src_dir: Path = typer.Argument(..., help="Folder with bundle.toml and the payload files."),
    out: Path = typer.Option(..., "--out", help="Bundle file to write, e.g. NAME-VERSION.bundle."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Pack SRC_DIR into an unsigned bundle file."""
    manifest = packer.pack(src_dir, out)
    if as_json:
        print_json({"bundle": str(out), "manifest": manifest.to_json_obj()})
        return
    console.print(
        f"packed {manifest.name} {manifest.version} (sequence {manifest.sequence}, "
        f"{len(manifest.files)} file(s), {_size(manifest.total_size)}) into {out}"
    )
    console.print("next: appliance bundle sign FILE --key KEYFILE")


@app.command("sign")
def sign(
    file: Path = typer.Argument(..., help="Bundle file."),
    key: Path = typer.Option(..., "--key", help="Private key file (NAME.key)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add one signature; run again with another key to reach a threshold."""
    keyid = packer.sign(file, key)
    if as_json:
        print_json({"bundle": str(file), "keyid": keyid})
        return
    console.print(f"signed {file} with key {keyid}")


@app.command("verify")
def verify(
    file: Path = typer.Argument(..., help="Bundle file."), as_json: bool = JSON_OPTION
) -> None:
    """Verify fully and offline; exit 0 only if the bundle would install."""
    with _manager() as manager, _progress("hashing", as_json) as progress:
        outcome = manager.verify_file(file, progress)
    if as_json:
        print_json(outcome.to_json())
    else:
        _print_outcome(outcome)


@app.command("install")
def install(
    file: Path = typer.Argument(..., help="Bundle file."),
    no_activate: bool = typer.Option(
        False, "--no-activate", help="Install but keep the current version active."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify, install and activate a bundle; on any failure nothing changes."""
    with _manager() as manager, _progress("installing", as_json) as progress:
        outcome = manager.install(file, activate=not no_activate, progress=progress)
    if as_json:
        print_json(outcome.to_json())
    else:
        _print_outcome(outcome)


@app.command("list")
def list_bundles(as_json: bool = JSON_OPTION) -> None:
    """List installed bundles and which version of each is active."""
    with _manager() as manager:
        bundles = manager.list()
    if as_json:
        print_json([b.to_json() for b in bundles])
        return
    if not bundles:
        console.print("no bundles installed")
        return
    table = Table()
    for column in ("name", "version", "seq", "kind", "state", "size", "installed", "signers"):
        table.add_column(column)
    for b in bundles:
        state = "REVOKED" if b.revoked else ("active" if b.active else "")
        table.add_row(
            b.name,
            b.version,
            str(b.sequence),
            b.kind,
            state,
            _size(b.total_size),
            b.installed_at,
            ", ".join(k[:12] for k in b.signers),
        )
    console.print(table)


def _print_active(bundle: InstalledBundle, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(bundle.to_json())
        return
    console.print(f"{verb} {bundle.name} {bundle.version} (sequence {bundle.sequence})")


@app.command("activate")
def activate(
    name: str = typer.Argument(..., help="Bundle name."),
    version: str = typer.Argument(..., help="Installed version to make active."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Make an installed version the active one."""
    with _manager() as manager:
        _print_active(manager.activate(name, version), "active:", as_json)


@app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="Bundle name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Re-activate the previous installed version (the anti-rollback floor stays)."""
    with _manager() as manager:
        _print_active(manager.rollback(name), "rolled back to", as_json)
