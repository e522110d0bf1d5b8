"""`appliance` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import sys
import traceback

from appliance.cli import (
    audit,
    bundle,
    calibrate,
    daemon,
    demo,
    distill,
    doctor,
    forward,
    keys,
    offline,
    outbox,
    policy,
    report,
    run,
    tokens,
    trust,
)
from appliance.cli.common import app, err_console
from appliance.cli.plan import plan as plan_command
from appliance.errors import ApplianceError
from appliance.status import cli as status_cli

app.add_typer(keys.app, name="keys")
app.add_typer(trust.app, name="trust")
app.add_typer(bundle.app, name="bundle")
app.add_typer(tokens.app, name="tokens")
app.add_typer(policy.app, name="policy")
app.add_typer(outbox.app, name="outbox")
app.add_typer(forward.distill_app, name="distill")
forward.distill_app.command("train")(distill.train)
forward.distill_app.command("eval")(distill.eval_)
forward.distill_app.command("pack")(distill.pack)
app.add_typer(offline.relay_app, name="relay")
app.add_typer(report.app, name="report")
outbox.app.command("export")(offline.export)
outbox.app.command("import")(offline.import_)
offline.relay_app.command("process")(offline.relay_process)
app.command("identity")(offline.identity)
app.command("doctor")(doctor.doctor)
app.command("status")(status_cli.status)
app.command("audit")(audit.audit)
app.command("calibrate")(calibrate.calibrate_command)
app.command("sync")(forward.sync)
app.command("serve")(daemon.serve)
app.command("demo")(demo.demo)
app.command("run")(run.run)
app.command("plan")(plan_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; exit 0 on success, 1 on a refused operation, 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Standalone mode: typer itself prints usage errors (exit 2) and help (exit 0).
        app(args=args, prog_name="appliance", standalone_mode=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        return 1
    except ApplianceError as e:
        if debug:
            traceback.print_exc()
        _error_line(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _error_line("interrupted")
        return 1
    except Exception as e:
        if debug:
            raise
        _error_line(f"unexpected {type(e).__name__}: {e} (run with --debug for details)")
        return 1
    return 0


def _error_line(message: str) -> None:
    # Messages may quote bytes from an untrusted bundle: never let them start a new line or
    # send escape codes to the operator's terminal.
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    err_console.print(f"error: {printable}", markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
