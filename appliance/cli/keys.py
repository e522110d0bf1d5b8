"""`appliance keys …`: publisher signing keys."""

from __future__ import annotations

from pathlib import Path

import typer

from appliance.bundles.keys import (
    PublicKey,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from appliance.cli.common import JSON_OPTION, console, home, print_json

app = typer.Typer(help="Create and show publisher signing keys.", no_args_is_help=True)


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


def _find(key: str) -> tuple[PublicKey, str]:
    """A key by file (NAME.pub, or NAME.key whose public half is shown) or trusted key id."""
    path = Path(key)
    if path.exists():
        if path.suffix == ".key":
            private = load_private_key(path)  # never printed: only its public half
            public = private.public_key()
            return PublicKey(key_id(public), public, path.stem), str(path)
        return load_public_key(path), str(path)
    from appliance.bundles import trust

    return trust.resolve_keyid(trust.load_store(home()), key), "the trust store"


@app.command("show")
def show(
    key: str = typer.Argument(
        ..., help="A NAME.pub or NAME.key file, or a trusted key's id (8+ hex characters)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Print a key's id (its fingerprint) and its raw public key in hex (for keyrings)."""
    public, source = _find(key)
    document = {"name": public.name, "keyid": public.keyid, "public": public.raw.hex()}
    if as_json:
        print_json({**document, "source": source})
        return
    console.print(f"name        {public.name}  (from {source})", markup=False)
    console.print(f"key id      {public.keyid}")
    console.print(f"public key  {public.raw.hex()}  (hex, as a keyring bundle lists it)")
