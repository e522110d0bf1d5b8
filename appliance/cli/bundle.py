"""`appliance bundle …`: pack, sign, verify, install and switch signed bundles."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.kinds import ACTIVATABLE_KINDS
from appliance.bundles.outcome import Outcome
from appliance.bundles.records import InstalledBundle
from appliance.cli.common import JSON_OPTION, console, err_console, home, print_json
from appliance.errors import BundleError, UsageError

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
    if outcome.action == "installed" and outcome.kind in ACTIVATABLE_KINDS:
        console.print("  active" if outcome.active else "  installed, not active")
    if outcome.action == "installed" and outcome.kind == "keyring":
        store = trust.load_store(home())
        keys = ", ".join(f"{k.name} {k.keyid[:16]}" for k in store.keys.values())
        console.print(
            f"  the trust store is replaced; in force now: {len(store.keys)} key(s), "
            f"threshold {store.threshold}: {keys}",
            markup=False,
        )
        console.print("  bundles are now verified against these keys only (appliance trust list)")
    if outcome.action == "installed" and outcome.kind == "revocation":
        console.print("  in force now: its key ids and bundle digests are never trusted again")


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
    undo: bool = typer.Option(
        False,
        "--undo",
        help="Go back to the version active before the last activation, whatever its sequence.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Re-activate the installed version below the active one, or with --undo the one active
    before the last activation (the anti-rollback floor stays)."""
    with _manager() as manager:
        bundle = manager.undo(name) if undo else manager.rollback(name)
    _print_active(bundle, "rolled back to", as_json)


@app.command("info")
def info(
    file: Path = typer.Argument(..., help="Bundle file."),
    as_json: bool = JSON_OPTION,
) -> None:
    """What a bundle file holds and who signed it; installs and trusts nothing."""
    from appliance.bundles.inspect import describe
    from appliance.settings import load_settings

    h = home()
    document = describe(file, h, load_settings(h.config_file).bundles.limits)
    if as_json:
        print_json(document)
        return
    _print_info(document)


def _print_info(d: dict[str, Any]) -> None:
    out = console.print
    out(f"{d['name']} {d['version']}  ({d['kind']}, sequence {d['sequence']})", markup=False)
    out(f"  what it does   {d['what_it_does']}", markup=False)
    if d["description"]:
        out(f"  description    {d['description']}", markup=False)
    expiry = (d["expires"] or "never") + (" (EXPIRED)" if d["expired"] else "")
    out(f"  created        {d['created']}, expires {expiry}")
    if d["requires"]:
        out(f"  requires       runtime {d['requires']}", markup=False)
    out(f"  digest         {d['digest']}")
    table = Table(title=f"payload: {len(d['files'])} file(s), {_size(d['total_size'])}")
    for column in ("path", "size", "sha256"):
        table.add_column(column)
    for f in d["files"]:
        table.add_row(f["path"], _size(f["size"]), f["sha256"][:16])
    out(table)
    if d["listing_problem"]:
        out(f"  PROBLEM: {d['listing_problem']}", markup=False)
    signers = Table(title="signatures")
    for column in ("key id", "name", "state"):
        signers.add_column(column)
    for s in d["signers"]:
        signers.add_row(s["keyid"][:16], s["name"] or "", s["state"])
    if not d["signers"]:
        signers.add_row("(unsigned)", "", "")
    out(signers)
    met = "met" if d["threshold_met"] else "NOT met"
    out(f"threshold      {d['valid_signatures']} valid trusted of {d['threshold']} needed: {met}")
    if "keyring" in d:
        k = d["keyring"]
        own = "met" if k["own_threshold_met"] else "NOT met"
        out(
            f"keyring        would trust {len(k['keys'])} key(s) with threshold {k['threshold']} "
            f"({', '.join(x['name'] for x in k['keys'])}); signed by "
            f"{k['own_valid_signatures']} of its own keys: {own}",
            markup=False,
        )
    if "revocation" in d:
        r = d["revocation"]
        out(f"revokes        {len(r['keys'])} key(s), {len(r['bundles'])} bundle(s)")
    if d["revoked"]:
        out("REVOKED        this bundle has been revoked on this box")
    if d["installed_as"]:
        out(f"installed      yes, as {d['name']} {d['installed_as']}", markup=False)
    elif d["would_be_rollback"]:
        floor = d["installed_floor"]
        out(f"ROLLBACK       sequence {d['sequence']} is not above {floor} installed")
    out("payload hashes are not checked here: appliance bundle verify FILE does that")


@app.command("remove")
def remove(
    name: str = typer.Argument(..., help="Bundle name."),
    version: str = typer.Argument(..., help="Installed version to remove (not the active one)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete one installed version to free disk; never the active one or an adapter's base."""
    from appliance.bundles import prune as pruning

    with _manager() as manager:
        removed = pruning.remove(manager, name, version)
    if as_json:
        print_json(removed.to_json())
        return
    console.print(
        f"removed {removed.name} {removed.version} ({_size(removed.size)} freed); "
        "it cannot be installed again (its sequence is below the floor)",
        markup=False,
    )


@app.command("prune")
def prune(
    name: str | None = typer.Argument(None, help="Only this bundle (default: every one)."),
    keep: int = typer.Option(
        1, "--keep", min=0, help="Older versions kept per bundle, for rollback."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; needed without a TTY."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete versions older than the active one, keeping the newest --keep of them."""
    from appliance.bundles import prune as pruning

    with _manager() as manager:
        doomed = pruning.candidates(manager, name, keep)
        if doomed and not yes:
            listed = ", ".join(f"{b.name} {b.version}" for b in doomed)
            question = f"remove {len(doomed)} old version(s): {listed}"
            if not sys.stdin.isatty():
                raise UsageError(f"{question}? refused: no terminal to ask on; add --yes")
            if not typer.confirm(f"{question}?", default=False, err=True):
                raise BundleError("nothing removed")
        removed = pruning.prune(manager, name, keep) if doomed else []
    if as_json:
        print_json([r.to_json() for r in removed])
        return
    if not removed:
        console.print("nothing to prune: no inactive version older than the kept ones")
    for r in removed:
        console.print(f"removed {r.name} {r.version} ({_size(r.size)})", markup=False)
