"""Kernels over timestamped series: limits, thresholds, rolling statistics, trends."""

from __future__ import annotations

import itertools
import math

import numpy as np

from telemon.dsp._select import kernels

_k = kernels("series")

__all__ = ["NO_VALUE", "as_series", "limit_bands", "limit_order_problem"]

NO_VALUE = -128
"""Band of a NaN sample: there is no value to compare."""


def as_series(values, name: str = "values") -> np.ndarray:
    """Return `values` as a contiguous 1-D float64 array, or raise ValueError saying why not."""
    try:
        arr = np.ascontiguousarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be numbers, got {type(values).__name__} ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional, got shape {arr.shape}")
    return arr


def limit_order_problem(limits: dict) -> str | None:
    """Why limits given in order red_low, yellow_low, yellow_high, red_high (None = unset)
    are not ordered, or None when they are."""
    present = [(k, v) for k, v in limits.items() if v is not None]
    for (k1, v1), (k2, v2) in itertools.pairwise(present):
        if v1 > v2:
            return f"limits out of order: {k1}={v1} > {k2}={v2}"
    return None


def limit_bands(values, *, red_low=None, yellow_low=None, yellow_high=None, red_high=None):
    """Where each value lies against four limits: -2 below red_low, -1 below yellow_low,
    0 inside, 1 above yellow_high, 2 above red_high, NO_VALUE for NaN.

    A limit that is None is not checked. Limits must be ordered
    red_low <= yellow_low <= yellow_high <= red_high (where set).
    """
    arr = as_series(values)
    named = {"red_low": red_low, "yellow_low": yellow_low,
             "yellow_high": yellow_high, "red_high": red_high}
    for key, limit in named.items():
        if limit is not None and (not isinstance(limit, (int, float)) or math.isnan(limit)):
            raise ValueError(f"{key}: must be a number or None, got {limit!r}")
    if problem := limit_order_problem(named):
        raise ValueError(problem)
    nan = math.nan
    return _k.limit_bands(
        arr,
        nan if red_low is None else float(red_low),
        nan if yellow_low is None else float(yellow_low),
        nan if yellow_high is None else float(yellow_high),
        nan if red_high is None else float(red_high),
    )
