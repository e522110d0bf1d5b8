"""`appliance tokens …`: the bearer tokens devices use to call the daemon."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.table import Table

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.tokens import TokenStore

app = typer.Typer(help="Manage device API tokens.", no_args_is_help=True)


class ScopeChoice(StrEnum):
    infer = "infer"
    admin = "admin"


@app.command("create")
def create(
    device: str = typer.Argument(..., help="Device name: letters, digits, '.', '_', '-'."),
    scope: ScopeChoice = typer.Option(
        ScopeChoice.infer, "--scope", help="infer: inference routes; admin: also /admin/…"
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a token for a device and print it (the only time it is shown)."""
    with TokenStore(home()) as store:
        token = store.create(device, scope.value)
    if as_json:
        print_json({"device": device, "scope": scope.value, "token": token})
        return
    console.print(
        f"token for {device} (scope {scope.value}); store it now, it cannot be shown again:",
        markup=False,
    )
    console.print(token, markup=False)


@app.command("list")
def list_tokens(as_json: bool = JSON_OPTION) -> None:
    """List devices with a token (never the tokens themselves)."""
    with TokenStore(home()) as store:
        infos = store.list()
    if as_json:
        print_json(
            [
                {
                    "device": i.device,
                    "scope": i.scope,
                    "created_at": i.created_at,
                    "last_used_at": i.last_used_at,
                }
                for i in infos
            ]
        )
        return
    table = Table(title="device tokens")
    for column in ("device", "scope", "created", "last used"):
        table.add_column(column)
    for i in infos:
        table.add_row(i.device, i.scope, i.created_at, i.last_used_at or "never")
    console.print(table)


@app.command("revoke")
def revoke(device: str = typer.Argument(..., help="The device whose token to revoke.")) -> None:
    """Revoke a device's token; its requests are refused from now on."""
    with TokenStore(home()) as store:
        store.revoke(device)
    console.print(f"revoked the token of {device}", markup=False)
