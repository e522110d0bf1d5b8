"""`appliance` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import sys
import traceback

import click
import typer

from appliance.cli import bundle, keys, trust
from appliance.cli.common import app, err_console
from appliance.errors import ApplianceError

app.add_typer(keys.app, name="keys")
app.add_typer(trust.app, name="trust")
app.add_typer(bundle.app, name="bundle")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; exit 0 on success, 1 on a refused operation, 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="appliance", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.UsageError as e:
        e.show()
        return 2
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 1
    except ApplianceError as e:
        if debug:
            traceback.print_exc()
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:
        if debug:
            raise
        err_console.print(
            f"error: unexpected {type(e).__name__}: {e} (run with --debug for details)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
