"""From a status document to problems a field tech can act on, and the box's health.

Each problem names what is wrong in one line and what to do next (a command where there is
one). Health: ``down`` when the daemon is not running, ``degraded`` when any problem is
found, else ``healthy``; the CLI exits 2, 1 or 0 accordingly.
"""

from __future__ import annotations

from typing import Any

from appliance import policy_upstreams
from appliance.settings import Settings

GiB = 1024**3
DISK_FREE_MIN_PERCENT = 10.0  # percent of the disk holding APPLIANCE_HOME
DISK_FREE_MIN_BYTES = 2 * GiB  # bytes
MEMORY_USED_MAX_PERCENT = 95.0  # percent
OUTBOX_FULL_PERCENT = 90.0  # percent of max_items or max_bytes
HOT_CELSIUS = 90.0  # degrees, when the sensor gives no "high" mark of its own
EXIT_CODES = {"healthy": 0, "degraded": 1, "down": 2}


def _problem(what: str, do: str, severity: str = "degraded") -> dict[str, str]:
    return {"severity": severity, "what": what, "do": do}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def problems(document: dict[str, Any], settings: Settings) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    daemon = document["daemon"]
    if not daemon.get("up"):
        found.append(
            _problem(
                "the daemon is not running"
                + (f" ({daemon['error']})" if daemon.get("error") else ""),
                "start it: sudo systemctl start appliance; if it stops again, read "
                "journalctl -u appliance -n 50 and run appliance doctor",
                "down",
            )
        )
    found += _model_problems(document)
    found += _hardware_problems(document)
    found += _outbox_problems(document)
    names = document.get("policy_upstreams")
    if names and names["escalation_off"]:
        check = policy_upstreams.check(names["listed"], (), names["configured"])
        found.append(_problem(check.escalation_off_message(), check.fix()))
    for error in document["errors"]:
        if error["source"] == "policy":
            found.append(
                _problem(
                    f"the policy cannot be loaded: {error['message']}",
                    "fix the policy file (appliance policy check --policy FILE) or install a "
                    "valid signed policy bundle",
                )
            )
    return found


def _model_problems(document: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    models = document["models"]
    served = [m for m in models if m["kind"] == "model"]
    if not served:
        found.append(
            _problem(
                "no model is active: devices get no answers",
                "copy a signed model bundle into the inbox (or a USB stick), or run "
                "appliance bundle install FILE",
            )
        )
    up = document["daemon"].get("up")
    gpu = bool(document["gpus"])
    for model in models:
        name = f"{model['name']} {model['version']}"
        if model.get("error"):
            found.append(
                _problem(
                    f"model {name} failed to load: {model['error']}",
                    f"run appliance doctor; go back to the previous version with "
                    f"appliance bundle rollback {model['name']}",
                )
            )
        elif up and model["kind"] == "model" and model.get("loaded") is False:
            found.append(
                _problem(
                    f"model {name} is not loaded",
                    "it loads on its first request; if requests fail, read journalctl -u appliance",
                )
            )
        if up and gpu and model.get("device") == "cpu":
            found.append(
                _problem(
                    f"model {name} runs on the CPU although a GPU is present",
                    "check the driver with nvidia-smi, and that llama-cpp-python was built "
                    "with CUDA (see docs/operations.md, GPU boxes)",
                )
            )
        if model.get("files_changed"):
            found.append(
                _problem(
                    f"bundle {name} was changed on disk after install: "
                    + "; ".join(model["files_changed"][:3]),
                    f"run appliance doctor (it checks every hash); go back with appliance bundle "
                    f"rollback {model['name']}, or install a newer signed version of it",
                )
            )
        expires = model.get("expires")
        if expires and expires < document["generated_at"]:
            found.append(
                _problem(
                    f"bundle {name} expired on {expires}",
                    "install a newer signed version of it from the publisher",
                )
            )
    return found


def _hardware_problems(document: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    machine = document["hardware"]
    disk = machine["disk"]
    free, percent = disk.get("free_bytes"), disk.get("free_percent")
    low = percent is not None and percent < DISK_FREE_MIN_PERCENT
    if free is not None and (low or free < DISK_FREE_MIN_BYTES):
        found.append(
            _problem(
                f"disk nearly full: {free / GiB:.1f} GiB"
                + (f" ({percent:.0f}%)" if percent is not None else "")
                + f" free in {disk['path']}",
                "appliance outbox purge (finished escalations); remove unused bundle "
                "versions; export golden answers first with appliance distill export",
            )
        )
    if machine["memory_used_percent"] >= MEMORY_USED_MAX_PERCENT:
        found.append(
            _problem(
                f"memory {machine['memory_used_percent']:.0f}% used",
                "check other processes with top; a smaller model or fewer loaded models helps",
            )
        )
    for sensor in machine["temperatures"]:
        limit = sensor.get("high_celsius") or HOT_CELSIUS
        if sensor["celsius"] >= limit:
            found.append(
                _problem(
                    f"{sensor['label']} at {sensor['celsius']:.0f} °C (limit {limit:.0f} °C)",
                    "check the fans and air flow of the box",
                )
            )
    for gpu in document["gpus"]:
        temperature = gpu.get("temperature_celsius")
        if temperature is not None and temperature >= HOT_CELSIUS:
            found.append(
                _problem(
                    f"GPU {gpu['index']} at {temperature:.0f} °C",
                    "check the fans and air flow of the box",
                )
            )
    return found


def _outbox_problems(document: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    outbox = document["outbox"]
    counts = outbox["counts"]
    fill = max(
        100.0 * outbox["items"] / outbox["max_items"],
        100.0 * outbox["bytes"] / outbox["max_bytes"],
    )
    if fill >= OUTBOX_FULL_PERCENT:
        dropping = outbox["when_full"] == "drop-oldest"
        found.append(
            _problem(
                f"outbox {fill:.0f}% full ({outbox['items']} of {outbox['max_items']} items): "
                + (
                    "the oldest low-priority escalations are being dropped"
                    if dropping
                    else "new escalations will be refused"
                ),
                "bring the uplink up (appliance sync --once), or carry batches out with "
                "appliance outbox export --out /media/usb/outbox",
            )
        )
    queued = counts["queued"]
    uplinks = document["uplinks"]
    waiting = document["sync"]["waiting"]
    if queued and waiting:
        advice = (
            "it resets at 00:00 UTC; raise [budgets] daily_usd in the policy to send sooner"
            if "budget" in waiting
            else "check the network and the upstream's key file; appliance sync --once "
            "shows the error; with no uplink at all use appliance outbox export"
        )
        found.append(
            _problem(
                f"{queued} escalations waiting (oldest {_age(outbox['oldest_queued_age_s'])}): "
                f"{waiting}",
                advice,
            )
        )
    elif queued and not uplinks:
        found.append(
            _problem(
                f"{queued} escalations waiting and no [[upstreams]] configured",
                "add an upstream to config.toml, or carry them out with appliance outbox export",
            )
        )
    if counts["failed"]:
        found.append(
            _problem(
                f"{counts['failed']} escalations failed for good (the upstream refused them)",
                "read why with appliance outbox list --state failed; "
                "appliance outbox retry ID once fixed",
            )
        )
    if counts["expired"]:
        found.append(
            _problem(
                f"{counts['expired']} escalations expired before an uplink came",
                "appliance outbox retry ID sends one again; appliance outbox purge forgets them",
            )
        )
    return found


def health(document: dict[str, Any]) -> str:
    severities = {p["severity"] for p in document["problems"]}
    if "down" in severities:
        return "down"
    return "degraded" if severities else "healthy"
