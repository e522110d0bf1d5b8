"""`appliance trust …`: the publisher keys this appliance accepts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from appliance.bundles import trust as trust_store
from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.state import open_state

app = typer.Typer(help="Manage trusted publisher keys.", no_args_is_help=True)


def _revoked() -> frozenset[str]:
    from appliance.bundles.records import revoked_keys

    h = home().ensure()
    db = open_state(h)
    try:
        return revoked_keys(db)
    finally:
        db.close()


@app.command("add")
def add(
    pubfile: Path = typer.Argument(..., help="A publisher's NAME.pub file."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Trust a publisher key."""
    key = trust_store.add_key(home().ensure(), pubfile, _revoked())
    if as_json:
        print_json({"keyid": key.keyid, "name": key.name})
        return
    console.print(f"trusted {key.name}  {key.keyid}")


@app.command("list")
def list_keys(as_json: bool = JSON_OPTION) -> None:
    """List trusted keys and the signature threshold."""
    store = trust_store.load_store(home().ensure())
    revoked = _revoked()
    rows = [
        {"keyid": k.keyid, "name": k.name, "revoked": k.keyid in revoked}
        for k in store.keys.values()
    ]
    if as_json:
        print_json({"threshold": store.threshold, "keys": rows})
        return
    table = Table(title=f"trusted keys (threshold {store.threshold})")
    table.add_column("name")
    table.add_column("key id")
    table.add_column("state")
    for row in rows:
        state = "REVOKED" if row["revoked"] else "trusted"
        table.add_row(str(row["name"]), str(row["keyid"]), state)
    console.print(table)


@app.command("remove")
def remove(keyid: str = typer.Argument(..., help="Key id (or a unique prefix of 8+ hex).")) -> None:
    """Stop trusting a key."""
    key = trust_store.remove_key(home().ensure(), keyid, _revoked())
    console.print(f"removed {key.name}  {key.keyid}")


@app.command("threshold")
def threshold(
    count: int = typer.Argument(..., min=1, help="Signatures from distinct trusted keys needed."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Set how many distinct trusted keys must sign a bundle (k of n)."""
    h = home().ensure()
    previous = trust_store.set_threshold(h, count, _revoked())
    keys = len(trust_store.load_store(h).keys)
    if as_json:
        print_json({"threshold": count, "previous": previous, "keys": keys})
        return
    console.print(f"threshold now {count} of {keys} trusted key(s) (was {previous})")
