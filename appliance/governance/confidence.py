"""The local answer's confidence, from the log-probabilities of the tokens it chose.

Three measures, all probabilities in (0, 1] so one threshold scale serves them all:

``mean``  the geometric mean of the token probabilities, exp(mean log p). Length-normalised
          and the usual baseline of model cascades; one ambiguous word among many equally
          good continuations barely moves it. The default (see policies/README.md).
``min``   the least likely token. Flags a single uncertain token (a digit of a number, a
          name) but fires on nearly every open-ended answer, where many words fit somewhere.
``tail``  the p-th percentile of the token probabilities: between the two, ignoring the
          worst few tokens of a long answer but not a run of uncertain ones.

Tokens whose log-probability was not computed (NaN) are left out; an answer with none
has no confidence (None), and the router treats that as "not known to be good enough".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np

Measure = Literal["mean", "min", "tail"]


def confidence(
    logprobs: Iterable[float], measure: Measure = "mean", percentile: float = 10.0
) -> float | None:
    """The answer's confidence under `measure`, or None when no token has a log-probability."""
    values = np.fromiter((lp for lp in logprobs if not math.isnan(lp)), dtype=np.float64)
    if values.size == 0:
        return None
    if measure == "mean":
        return float(math.exp(values.mean()))
    if measure == "min":
        return float(math.exp(values.min()))
    if measure == "tail":
        # "lower" picks an actual token's value: no interpolation between two tokens
        return float(math.exp(np.percentile(values, percentile, method="lower")))
    raise ValueError(f"unknown confidence measure {measure!r}")
