"""The TCO ledger: a row per request answered by the daemon, a row per upstream answer.

Two kinds of rows in the ``tco_ledger`` table of state.db:

- ``kind = 'request'`` (written by the daemon when it decides a request): the model, the
  route (``local``, ``escalated``, ``queued``, ``refused``), the tokens the local model read
  and wrote, its wall time (``wall_ms``, 0 when it did not run), what running the box for
  that time cost (``local_cost_usd``), and what those local tokens would have cost on the API
  (``api_cost_usd``, at the price the policy gives for ``upstream``: the one this request
  went or would have gone to);
- ``kind = 'upstream'`` (written by whoever received the answer: the daemon's sync engine,
  ``appliance sync``, ``outbox import``): the upstream, the tokens it billed, and what they
  cost.

So a request escalated at once has a request row (its local attempt, if any) and an upstream
row; a queued one gets its upstream row later, when it is synced. Rows are written off the
request path by a ``RowWriter``. Local cost is busy seconds x (hardware USD/hour + (box W +
GPU W) x USD/kWh / 1000) / 3600, where a second shared by runs that overlap (batching) is
charged once (``BusyTime``); the GPUs' draw comes from ``nvidia-smi``, sampled in the
background.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.home import Home
from appliance.rowwriter import RowWriter
from appliance.schema import LEDGER, TCO_LEDGER
from appliance.settings import Settings, UpstreamSettings
from appliance.state import utc_now
from appliance.tco.busy import BusyTime

if TYPE_CHECKING:
    from appliance.policy.schema import Policy

TABLE = TCO_LEDGER
SCHEMA = LEDGER  # the table's statements, as appliance.schema creates them
ESTIMATED_ROUTE = "upstream-estimated"  # an upstream row whose usage is an estimate
GPU_SAMPLE_S = 5.0  # seconds between nvidia-smi power readings


def api_cost(price_in: float, price_out: float, prompt: int, completion: int) -> float:
    """USD for these tokens at these prices (USD per million tokens)."""
    return (prompt * price_in + completion * price_out) / 1_000_000


def _watts(value: object) -> float:
    """A GPU's reported draw; anything but a number (no reading) counts as 0."""
    return float(value) if isinstance(value, int | float) else 0.0


class GpuPower:
    """The GPUs' total draw in watts, read by a background thread (never on a request).

    The first reading is taken by that thread too, so building a ledger never waits for
    ``nvidia-smi``; a machine without one (no GPU listed) stops the thread after it.
    """

    def __init__(
        self,
        read: Callable[[], list[dict[str, object]]] | None = None,
        interval_s: float = GPU_SAMPLE_S,
    ) -> None:
        if read is None:
            from appliance.status.hardware import gpus

            read = gpus
        self._read = read
        self._interval = interval_s
        self.watts = 0.0
        self.sampled = threading.Event()  # set after the first reading
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-power", daemon=True)
        self._thread.start()

    def _sample(self) -> bool:
        """Read the draw; False when there is no GPU to read (no point asking again)."""
        try:
            found = self._read()
            self.watts = sum(_watts(g.get("power_watts")) for g in found)
        except Exception:  # a flaky nvidia-smi must not stop the ledger
            self.watts = 0.0
            return True
        return bool(found)

    def _run(self) -> None:
        more = self._sample()
        self.sampled.set()
        while more and not self._stop.wait(self._interval):
            self._sample()

    def close(self) -> None:
        self._stop.set()


class Ledger:
    """One per process that serves requests or receives upstream answers."""

    def __init__(
        self,
        home: Home,
        settings: Settings,
        gpu: GpuPower | None = None,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._writer = RowWriter(home, TABLE)
        self._gpu = gpu if gpu is not None else (GpuPower() if settings.tco.gpu_power else None)
        self._upstreams = {u.name: u for u in settings.upstreams}
        self._busy = BusyTime()

    # -- prices ----------------------------------------------------------------------------

    def reference(self, policy: Policy, upstream: str | None) -> tuple[str | None, float, float]:
        """The upstream whose price a local answer is compared with, and its prices.

        The one named (the request's, when configured), else the first in the policy's
        upstream order (an external one first: the comparison is with a proprietary API),
        else the first entry of the policy's price table; none: 0.
        """
        chosen: UpstreamSettings | None = self._upstreams.get(upstream or "")
        if chosen is None:
            order = policy.upstream_order(list(self._upstreams)) or tuple(self._upstreams)
            ordered = [self._upstreams[name] for name in order]
            external = [u for u in ordered if u.perimeter == "external"]
            candidates = external or ordered
            chosen = candidates[0] if candidates else None
        if chosen is not None:
            price_in, price_out = policy.price_for(
                chosen.name, chosen.price_input_per_mtok, chosen.price_output_per_mtok
            )
            return chosen.name, price_in, price_out
        for name, price in policy.prices.items():
            return name, price.input_per_mtok or 0.0, price.output_per_mtok or 0.0
        return None, 0.0, 0.0

    def local_cost(self, seconds: float) -> float:
        """What running the box for `seconds` cost."""
        tco = self.settings.tco
        watts = tco.power_watts + (self._gpu.watts if self._gpu is not None else 0.0)
        per_hour = tco.hardware_usd_per_hour + watts * tco.electricity_usd_per_kwh / 1000
        return seconds * per_hour / 3600

    # -- rows ------------------------------------------------------------------------------

    def request(
        self,
        policy: Policy,
        *,
        request_id: str,
        model: str,
        route: str,
        device: str | None,
        upstream: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        ended: float | None = None,
    ) -> None:
        """A request the daemon decided.

        Tokens and `seconds` are the local model's run (0 when it did not run), which ended
        at `ended` (``time.perf_counter()``; default now): the box is charged for the part of
        that run no other request's run already paid for.
        """
        name, price_in, price_out = self.reference(policy, upstream)
        end = time.perf_counter() if ended is None else ended
        busy = self._busy.charge(end - seconds, end) if seconds > 0 else 0.0
        self._writer.write(
            {
                "at": self._clock(),
                "kind": "request",
                "request_id": request_id,
                "model": model,
                "route": route,
                "device": device,
                "upstream": name,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "wall_ms": round(seconds * 1000, 3),
                "api_price_in": price_in,
                "api_price_out": price_out,
                "api_cost_usd": api_cost(price_in, price_out, prompt_tokens, completion_tokens),
                "local_cost_usd": self.local_cost(busy),
            }
        )

    def upstream_answer(
        self,
        policy: Policy,
        *,
        request_id: str,
        upstream: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        seconds: float = 0.0,
        estimated: bool = False,
    ) -> None:
        """An answer received from an upstream (now, by sync, or by USB import).

        `estimated`: a request that may have reached the upstream (and be billed) but gave
        no usable answer, so no usage: its tokens and cost are an estimate, and the row's
        route says so (``upstream-estimated``).
        """
        _, price_in, price_out = self.reference(policy, upstream)
        self._writer.write(
            {
                "at": self._clock(),
                "kind": "upstream",
                "request_id": request_id,
                "model": None,
                "route": ESTIMATED_ROUTE if estimated else "upstream",
                "device": None,
                "upstream": upstream,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "wall_ms": round(seconds * 1000, 3),
                "api_price_in": price_in,
                "api_price_out": price_out,
                "api_cost_usd": cost_usd,
                "local_cost_usd": 0.0,
            }
        )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Stop the GPU sampler; write every row given so far."""
        if self._gpu is not None:
            self._gpu.close()
        self._writer.close()
