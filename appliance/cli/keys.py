"""`appliance keys …`: publisher signing keys."""

from __future__ import annotations

from pathlib import Path

import typer

from appliance.bundles.keys import generate_keypair
from appliance.cli.common import JSON_OPTION, console, print_json

app = typer.Typer(help="Create publisher signing keys.", no_args_is_help=True)


@app.command("generate")
def generate(
    name: str = typer.Argument(..., help="Key name: NAME.key and NAME.pub are written."),
    out: Path = typer.Option(..., "--out", help="Folder for the key files."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write OUT/NAME.key (private, mode 0600) and OUT/NAME.pub."""
    private, public, keyid = generate_keypair(name, out)
    if as_json:
        print_json({"private": str(private), "public": str(public), "keyid": keyid})
        return
    console.print(f"private key  {private}  (mode 0600: keep it off the appliance)")
    console.print(f"public key   {public}")
    console.print(f"key id       {keyid}")
