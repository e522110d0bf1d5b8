#!/usr/bin/env python3
"""Benchmark: `appliance plan`'s predictions against measured figures on this machine.

For each demo model (Gemma 3 270M Q4_K_M, SmolLM2 135M Instruct Q4_1), built from its pinned
recipe, it runs the plan for this box (memory from llama.cpp's no-allocation trial, speed
from the measured bandwidth and the default CPU efficiencies) and then `--measure` (the
daemon's real backend: a ~200-token prompt, 64 tokens generated greedily), and prints
predicted vs measured decode and prefill tokens/s and resident memory, with the ratio
(measured / predicted), plus the efficiencies that would have made the prediction exact.

    .venv/bin/python scripts/bench_plan.py [--slots 4] [--context 2048] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.bundles.recipes import CHAT_RECIPE, DEMO_RECIPE, build_source
from appliance.home import Home
from appliance.plan.run import PlanRequest, make_plan

MIB = 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-plan-"))
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
        f"slots {args.slots} x {args.context} tokens; figures taken under whatever else runs"
    )
    header = (
        "model",
        "decode pred",
        "decode meas",
        "ratio",
        "prefill pred",
        "prefill meas",
        "ratio",
        "MiB pred",
        "MiB meas (RSS added)",
        "ratio",
        "fit decode eff",
        "fit prefill eff",
    )
    rows = []
    for recipe in (DEMO_RECIPE, CHAT_RECIPE):
        src = build_source(recipe, work / recipe.name)
        gguf = next(src.glob("*.gguf"))
        request = PlanRequest(
            model=str(gguf),
            context=args.context,
            slots=args.slots,
            targets=("CPU-8core-DDR5-desktop",),
            measure=True,
        )
        document = make_plan(request, Home(work / "home"))
        m = document["measured"]
        rows.append(
            (
                recipe.name,
                f"{m['predicted_decode_tokens_per_s']:.1f}",
                f"{m['measured_decode_tokens_per_s']:.1f}",
                f"{m['decode_ratio']:.2f}",
                f"{m['predicted_prefill_tokens_per_s']:.0f}",
                f"{m['measured_prefill_tokens_per_s']:.0f}",
                f"{m['prefill_ratio']:.2f}",
                f"{m['predicted_total_bytes'] / MIB:.0f}",
                f"{m['measured_model_rss_bytes'] / MIB:.0f}",
                f"{m['memory_ratio']:.2f}",
                f"{m['calibrated_decode_efficiency'] or 0:.2f}",
                f"{m['calibrated_prefill_efficiency']:.2f}",
            )
        )
        print(
            f"  {recipe.name}: host bandwidth measured {document['host_bandwidth_gbs']:.1f} GB/s",
            file=sys.stderr,
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
