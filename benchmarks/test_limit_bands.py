"""limit_bands: the compiled core against its NumPy reference and a plain Python loop,
in the same run (report the ratios, not absolute times)."""

import math

import pytest

from telemon.cext import series_reference as reference

LIMITS = (88.0, 90.0, 100.0, 110.0)
compiled = pytest.importorskip("telemon.cext._series", reason="compiled kernels not built")


def python_loop(values, red_low, yellow_low, yellow_high, red_high):
    out = []
    for v in values:
        if math.isnan(v):
            out.append(reference.NO_VALUE)
        elif v < red_low:
            out.append(-2)
        elif v > red_high:
            out.append(2)
        elif v < yellow_low:
            out.append(-1)
        elif v > yellow_high:
            out.append(1)
        else:
            out.append(0)
    return out


@pytest.mark.benchmark(group="limit_bands 525,600 samples")
def test_compiled(benchmark, spo2_series):
    result = benchmark(compiled.limit_bands, spo2_series, *LIMITS)
    assert result.tolist() == reference.limit_bands(spo2_series, *LIMITS).tolist()


@pytest.mark.benchmark(group="limit_bands 525,600 samples")
def test_numpy_reference(benchmark, spo2_series):
    benchmark(reference.limit_bands, spo2_series, *LIMITS)


@pytest.mark.benchmark(group="limit_bands 525,600 samples")
def test_python_loop(benchmark, spo2_series):
    values = spo2_series.tolist()
    result = benchmark.pedantic(python_loop, args=(values, *LIMITS), rounds=3)
    assert result == reference.limit_bands(spo2_series, *LIMITS).tolist()
