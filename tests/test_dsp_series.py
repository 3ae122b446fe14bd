"""telemon.dsp: the compiled core and its NumPy reference agree on the same data."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemon import dsp
from telemon.cext import series_reference as reference

compiled = pytest.importorskip("telemon.cext._series", reason="compiled kernels not built")

LIMITS = dict(red_low=88.0, yellow_low=90.0, yellow_high=100.0, red_high=110.0)
ORDER = ("red_low", "yellow_low", "yellow_high", "red_high")


def both(values, **limits):
    args = [math.nan if limits.get(k) is None else float(limits[k]) for k in ORDER]
    arr = np.ascontiguousarray(values, dtype=np.float64)
    return compiled.limit_bands(arr, *args), reference.limit_bands(arr, *args)


def test_the_process_uses_the_implementation_its_environment_asks_for():
    wanted = "reference" if os.environ.get("TELEMON_PUREPYTHON") == "1" else "compiled"
    assert wanted == dsp.IMPLEMENTATION


@pytest.mark.parametrize("switch, expected", [("1", "reference"), ("0", "compiled")])
def test_telemon_purepython_switch(switch, expected):
    out = subprocess.run(
        [sys.executable, "-c", "import telemon.dsp as d; print(d.IMPLEMENTATION)"],
        env={**os.environ, "TELEMON_PUREPYTHON": switch}, capture_output=True, text=True,
        check=True).stdout.strip()
    assert out == expected


@pytest.mark.parametrize("values, expected", [
    ([], []),
    ([95.0], [0]),
    ([87.9, 88.0, 89.9, 90.0, 100.0, 100.1, 110.0, 110.1], [-2, -1, -1, 0, 0, 1, 1, 2]),
    ([math.nan, 95.0, math.nan], [dsp.NO_VALUE, 0, dsp.NO_VALUE]),
    ([-math.inf, math.inf, 1e308, -1e308], [-2, 2, 2, -2]),
])
def test_edge_cases_match_between_implementations(values, expected):
    got_compiled, got_reference = both(values, **LIMITS)
    assert got_compiled.tolist() == expected
    assert got_reference.tolist() == expected
    assert dsp.limit_bands(values, **LIMITS).tolist() == expected


def test_unset_limits_are_not_checked():
    got_compiled, got_reference = both([0.0, 50.0, 1e9], yellow_high=100.0)
    assert got_compiled.tolist() == got_reference.tolist() == [0, 0, 1]


finite_or_nan = st.floats(allow_infinity=True, allow_nan=True, width=64)


@given(st.lists(finite_or_nan, max_size=200),
       st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=4, max_size=4))
def test_property_compiled_equals_reference(values, raw_limits):
    present = sorted(v for v in raw_limits if v is not None)
    limits = {}
    for key, value in zip(ORDER, raw_limits, strict=True):
        limits[key] = None if value is None else present.pop(0)
    got_compiled, got_reference = both(values, **limits)
    assert got_compiled.dtype == got_reference.dtype == np.int8
    assert got_compiled.tolist() == got_reference.tolist()


@pytest.mark.parametrize("values, message", [
    ([[1.0, 2.0]], "one-dimensional"),
    (["a", "b"], "values: must be numbers"),
    (object(), "values: must be numbers"),
])
def test_bad_values_are_rejected_with_a_reason(values, message):
    with pytest.raises(ValueError, match=message):
        dsp.limit_bands(values, red_low=1.0)


def test_limits_out_of_order_are_rejected():
    with pytest.raises(ValueError, match=r"limits out of order: yellow_low=95\.0 > yellow_high=90"):
        dsp.limit_bands([1.0], yellow_low=95.0, yellow_high=90.0)


def test_a_nan_limit_is_rejected():
    with pytest.raises(ValueError, match="red_low: must be a number or None"):
        dsp.limit_bands([1.0], red_low=math.nan)
