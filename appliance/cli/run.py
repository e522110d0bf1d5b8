"""`appliance run MODEL PROMPT`: one answer from an installed model, without the daemon."""

from __future__ import annotations

import json

import typer

from appliance.cli.common import JSON_OPTION, console, err_console, home, print_json
from appliance.errors import ModelNotFoundError, UsageError
from appliance.settings import load_settings

SHOWN_VALUES = 8  # of an embedding, on a terminal


def run(
    model: str = typer.Argument(..., help="An active model's name (see `appliance bundle list`)."),
    prompt: str = typer.Argument(..., help="The user's message, the prompt, or the text to embed."),
    system: str | None = typer.Option(None, "--system", help="A system message (chat models)."),
    raw: bool = typer.Option(False, "--raw", help="Give a chat model the prompt as is."),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="Tokens to generate, at most."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Answer one prompt with an installed model, in this process: a smoke test, no daemon.

    It loads as the daemon loads it (files checked, adapter applied); nothing is recorded.
    """
    from appliance.runtime.oneshot import answer_once

    if not prompt.strip():
        raise UsageError("the prompt is empty")
    h = home()
    if not h.state_db.exists():
        raise ModelNotFoundError(f"no model is installed in {h.root} (APPLIANCE_HOME)")
    settings = load_settings(h.config_file)
    answer = answer_once(
        h,
        settings.runtime,
        model,
        prompt,
        system=system,
        raw=raw,
        max_tokens=max_tokens,
        temperature=temperature,
    )
    if as_json:
        print_json(answer.to_json())
        return
    if answer.vector:
        shown = ", ".join(f"{v:.4f}" for v in answer.vector[:SHOWN_VALUES])
        console.print(f"[{shown}, …] ({len(answer.vector)} dimensions)", markup=False)
    elif answer.labels:
        console.print(json.dumps(answer.labels, indent=2, sort_keys=True), markup=False)
    elif answer.role == "chat" and not raw:
        console.print(answer.text.strip(), markup=False)
    else:  # a continuation: its leading newline and indentation are part of it (code)
        console.print(answer.text.rstrip(), markup=False)
    stats = f"{answer.prompt_tokens} prompt tokens"
    if answer.role in ("chat", "completion"):
        stats += f", {answer.completion_tokens} tokens in {answer.seconds:.1f} s"
        if answer.seconds > 0:
            stats += f" ({answer.completion_tokens / answer.seconds:.1f} tokens/s)"
    err_console.print(
        f"{answer.model} {answer.version} on {answer.device}, loaded in "
        f"{answer.load_seconds:.1f} s: {stats}",
        markup=False,
    )
