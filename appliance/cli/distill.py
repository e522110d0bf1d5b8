"""`appliance distill train|eval|pack`: golden answers in, a measured adapter bundle out.

Thin: each command parses, calls ``appliance.distill``, prints. ``train`` needs the
``[train]`` extra (torch, transformers, peft); it is imported only when ``train`` runs, so
the daemon's own install (without it) keeps every other command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from appliance.cli.common import JSON_OPTION, console, err_console, home, print_json
from appliance.distill.rundir import RunDir
from appliance.errors import DistillError
from appliance.settings import load_settings

STEP_LINES = 10  # without a terminal, one progress line every this many steps


@contextmanager
def _steps(label: str, quiet: bool) -> Iterator[Callable[[int, int, str], None]]:
    """Report (done, total, note): a bar on a terminal, a line now and then otherwise."""
    if quiet:
        yield lambda done, total, note: None
        return
    if not sys.stderr.isatty():

        def line(done: int, total: int, note: str) -> None:
            if done == total or done % STEP_LINES == 0:
                err_console.print(f"{label} {done}/{total} {note}", markup=False)

        yield line
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None, note="")
        yield lambda done, total, note: bar.update(task, completed=done, total=total, note=note)


def train(
    golden: Path = typer.Argument(..., help="Golden pairs (chat JSONL from distill export)."),
    base: str = typer.Option(
        ..., "--base", help="The model: a model bundle file, a GGUF file or an installed name."
    ),
    out: Path = typer.Option(..., "--out", help="The run folder (resumed when run again)."),
    steps: int = typer.Option(200, "--steps", min=1, help="Optimisation steps."),
    rank: int = typer.Option(16, "--rank", min=1, help="LoRA rank."),
    alpha: int = typer.Option(32, "--alpha", min=1, help="LoRA alpha (the scale is alpha/rank)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Pairs per step."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", min=0.0),
    targets: str = typer.Option(
        "q_proj,k_proj,v_proj,o_proj", "--targets", help="Modules to adapt, comma-separated."
    ),
    heldout: float = typer.Option(
        0.2, "--heldout", min=0.0, max=0.9, help="Share of prompts held out (never trained on)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, the batches and the LoRA."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=8, help="Longest pair, tokens."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: every core)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune a LoRA adapter on golden pairs (on a workstation, with the train extra)."""
    try:
        from appliance.distill import train as training
        from appliance.distill.trainer import Step, TrainSettings
    except ImportError as e:
        raise DistillError(
            f"training needs the [train] extra ({e.name} is missing): "
            "pip install 'appliance[train]' (see README, distillation)"
        ) from e
    settings = TrainSettings(
        rank=rank,
        alpha=alpha,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        threads=threads,
    )
    with _steps("training", as_json) as report:

        def on_step(step: Step) -> None:
            report(step.step, step.total, f"loss {step.loss:.3f}  {step.seconds:.1f} s/step")

        def on_phase(text: str) -> None:
            if not as_json:
                err_console.print(text, markup=False)

        result = training.run(
            golden,
            base,
            out,
            home(),
            settings,
            heldout_share=heldout,
            max_tokens=max_tokens,
            on_phase=on_phase,
            on_step=on_step,
        )
    document = {k: v for k, v in result.document.items() if k != "base_config"}
    if as_json:
        print_json(document)
        return
    data, losses = document["data"], document["losses"]
    console.print(
        f"trained on {data['train']} pairs ({data['heldout']} held out, {data['duplicates']} "
        f"duplicates and {data['screened_out']} screened out, {data['too_long']} too long); "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out loss "
        f"{_number(document['heldout_loss_before'])} -> {_number(document['heldout_loss_after'])}",
        markup=False,
    )
    for reason in document["screened_out"]:
        console.print(f"  left out {reason}", markup=False)
    console.print(f"adapter: {RunDir(out).adapter}", markup=False)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def eval_(
    run: Path = typer.Argument(..., help="The run folder distill train wrote."),
    policy: Path | None = typer.Option(
        None, "--policy", help="A policy file (default: the one in force in APPLIANCE_HOME)."
    ),
    price_in: float | None = typer.Option(
        None, "--price-in", min=0.0, help="Upstream USD per million input tokens."
    ),
    price_out: float | None = typer.Option(
        None, "--price-out", min=0.0, help="Upstream USD per million output tokens."
    ),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Answer tokens."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Base vs base + adapter on the held-out pairs, through llama.cpp as the daemon runs them."""
    from appliance.distill import evaluate
    from appliance.policy.load import load_policy

    h = home()
    settings = load_settings(h.config_file)
    chosen = load_policy(policy) if policy else evaluate.policy_in_force(h, settings)
    price = evaluate.pricing(chosen, settings)
    if price_in is not None or price_out is not None:
        price = evaluate.Pricing(
            "--price-in/--price-out",
            price_in if price_in is not None else (price.input_per_mtok if price else 0.0),
            price_out if price_out is not None else (price.output_per_mtok if price else 0.0),
        )
    folder = RunDir(run)
    with _steps("answering", as_json) as report:
        total = 2 * _count_lines(folder.need(folder.heldout_set, "train"))
        done = 0

        def on_answer() -> None:
            nonlocal done
            done += 1
            report(done, total, "")

        document = evaluate.evaluate(folder, chosen, price, max_tokens, on_answer)
    if as_json:
        print_json(document)
        return
    console.print(eval_table(document))
    if price is None:
        console.print(
            "no upstream price is known: give --price-in/--price-out, [[upstreams]] prices in "
            "config.toml, or a [prices] table in the policy",
            markup=False,
        )
    if document["worse"]:
        console.print(f"worse than the base: {'; '.join(document['worse'])}", markup=False)


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text("utf-8").splitlines() if line.strip())


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def eval_table(document: dict[str, Any]) -> Table:
    policy = document["policy"]
    table = Table(
        title=f"{document['heldout_pairs']} held-out pairs, policy {policy['name']} "
        f"(threshold {policy['confidence_threshold']}, {policy['confidence_measure']})",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column("base + adapter", justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("exact match", lambda d: _share(d["exact_match"])),
        ("token F1", lambda d: _number(d["token_f1"])),
        ("mean confidence", lambda d: _number(d["confidence"]["mean"])),
        ("confidence p10 / median / p90", _spread),
        ("escalation rate", lambda d: _share(d["escalation_rate"])),
        ("exact match of answers kept local", lambda d: _share(d["kept_local_exact_match"])),
        ("upstream cost per 1000 queries", _cost),
        ("seconds per answer", lambda d: _number(d["seconds_per_answer"])),
    ]
    for label, cell in rows:
        table.add_row(label, cell(document["base"]), cell(document["adapter"]))
    return table


def _spread(d: dict[str, Any]) -> str:
    c = d["confidence"]
    return " / ".join(_number(c[k]) for k in ("p10", "median", "p90"))


def _cost(d: dict[str, Any]) -> str:
    value = d["upstream_cost_per_1000_usd"]
    return "-" if value is None else f"${value:,.4f}"


def pack(
    run: Path = typer.Argument(..., help="The run folder (after distill train and eval)."),
    out: Path = typer.Option(..., "--out", help="The bundle file to write."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default BASE-tuned)."),
    version: str | None = typer.Option(None, "--version", help="Default: the UTC time."),
    sequence: int | None = typer.Option(
        None, "--sequence", min=1, help="Anti-rollback counter (default: the Unix time)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Pack even when the adapter did worse than its base."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """An unsigned adapter bundle naming its base's digest, with the eval in its manifest."""
    from appliance.distill import pack as packer

    packed = packer.pack(RunDir(run), out, name, version, sequence, force)
    document = {
        "path": str(packed.path),
        "name": packed.manifest.name,
        "version": packed.manifest.version,
        "sequence": packed.manifest.sequence,
        "forced": packed.forced,
    }
    if as_json:
        print_json(document)
        return
    console.print(
        f"{packed.manifest.name} {packed.manifest.version} packed to {packed.path} "
        f"(unsigned: appliance bundle sign {packed.path} --key KEY)",
        markup=False,
    )
    if packed.forced:
        console.print(f"packed despite: {'; '.join(packed.forced)}", markup=False)
