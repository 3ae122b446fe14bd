"""Series primitives: the compiled core against its reference, pandas and plain NumPy, on the
same year of irregular SpO2 (525,600 samples, 1 % NaN), in the same run. Report ratios, not
absolute times. Every peer's result is checked against the compiled one, so each row is the
same work (or says where a peer does less).

A second set of groups ("5,000 samples, alarm engine size") runs rolling, EWMA and MACD on
the first MAX_SERIES samples: the most readings the alarm engine hands a trend rule, where
per-call costs (checks, allocation) weigh as much as the loop.

pandas is optional (`pip install telemon[bench]`); its rows are skipped without it. NumPy has
no recurrence primitive, so for EWMA, MACD and CUSUM with restarts the NumPy peer is the
reference itself (a Python loop over a NumPy array); CUSUM without restarts has pandas and
NumPy peers built on cumulative sums (below). The EWMA and MACD groups of a year of samples
also time a "memory floor": copying the input to as many new columns as the kernel returns,
which is what any such function must at least do, so pandas' time over it bounds the
attainable ratio.
"""

import numpy as np
import pytest

from telemon import dsp
from telemon.alarms import MAX_SERIES
from telemon.cext import series_reference as reference

compiled = pytest.importorskip("telemon.cext._series", reason="compiled kernels not built")

WINDOW = 3 * dsp.DAY
FAST, SLOW, SIGNAL = 12, 26, 9
ALPHA = 2 / (FAST + 1)
MACD_ALPHAS = (2 / (FAST + 1), 2 / (SLOW + 1), 2 / (SIGNAL + 1))
CUSUM = dict(mu=93.0, sigma=3.0, k=0.5, h=5.0)
REFERENCE_SLICE = 5_000  # samples the per-window reference runs when benchmarks are disabled


@pytest.fixture(scope="session")
def spo2_times(spo2_series):
    """Whole seconds, about one a minute, irregular, with a few hours-long gaps (the device
    off at night): exact in float64 and in pandas' nanoseconds, so window edges agree."""
    rng = np.random.default_rng(8)
    steps = np.ceil(rng.exponential(60, spo2_series.size))
    steps[rng.random(spo2_series.size) < 0.001] += 6 * 3600
    return np.cumsum(steps)


@pytest.fixture(scope="session")
def spo2_pandas(spo2_times, spo2_series):
    pd = pytest.importorskip("pandas")
    return pd.Series(spo2_series, index=pd.to_datetime(spo2_times, unit="s"))


@pytest.fixture(scope="session")
def engine_times(spo2_times):
    return spo2_times[:MAX_SERIES].copy()


@pytest.fixture(scope="session")
def engine_series(spo2_series):
    return spo2_series[:MAX_SERIES].copy()


@pytest.fixture(scope="session")
def engine_pandas(spo2_pandas):
    return spo2_pandas.iloc[:MAX_SERIES].copy()


def assert_close(got, want, rtol=1e-9):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol,
                               atol=1e-9, equal_nan=True)


def _prefix(benchmark, t, x):
    """The whole series, or a slice of it for a smoke run (--benchmark-disable)."""
    return (t[:REFERENCE_SLICE], x[:REFERENCE_SLICE]) if benchmark.disabled else (t, x)


# --- rolling count/mean/SD/min/max over 3 days --------------------------------------------------

ROLLING = "rolling 3-day count/mean/SD/min/max, 525,600 irregular samples"


@pytest.mark.benchmark(group=ROLLING)
def test_rolling_compiled(benchmark, spo2_times, spo2_series):
    result = benchmark(compiled.rolling, spo2_times, spo2_series, WINDOW)
    assert result[0].max() > 3000  # a real 3-day window: thousands of samples each


@pytest.mark.benchmark(group=ROLLING)
def test_rolling_telemon_dsp_api(benchmark, spo2_times, spo2_series):
    """The public call: input checks (sortedness, finiteness) included."""
    result = benchmark(dsp.rolling, spo2_times, spo2_series, window=WINDOW)
    want = compiled.rolling(spo2_times, spo2_series, WINDOW)
    for got, expected in zip(result, want, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.benchmark(group=ROLLING)
def test_rolling_reference(benchmark, spo2_times, spo2_series):
    """Two-pass statistics of every window: the specification, one round."""
    t, x = _prefix(benchmark, spo2_times, spo2_series)
    result = benchmark.pedantic(reference.rolling, args=(t, x, WINDOW), rounds=1)
    want = compiled.rolling(t, x, WINDOW)
    for got, expected in zip(result, want, strict=True):
        assert_close(got, expected)


@pytest.mark.benchmark(group=ROLLING)
def test_rolling_pandas(benchmark, spo2_pandas, spo2_times, spo2_series):
    """Series.rolling('3D') on a DatetimeIndex: the same five statistics."""

    def pandas_rolling(series):
        window = series.rolling("3D")
        return window.count(), window.mean(), window.std(), window.min(), window.max()

    result = benchmark(pandas_rolling, spo2_pandas)
    want = compiled.rolling(spo2_times, spo2_series, WINDOW)
    for got, expected in zip(result, want, strict=True):
        assert_close(got.to_numpy(), expected)


def numpy_rolling(t, x, window):
    """Cumulative sums between window edges found by searchsorted: count, mean and SD only
    (NumPy has no sliding min/max over variable windows). Fast, but sums of squares lose
    precision when the mean is large against the SD, and one huge value ruins everything
    after it: why the kernel does not work this way."""
    first = np.searchsorted(t, t - window, side="right")
    valid = ~np.isnan(x)
    zeros = np.zeros(1)
    n = np.concatenate([zeros, np.cumsum(valid)])
    s = np.concatenate([zeros, np.cumsum(np.where(valid, x, 0.0))])
    q = np.concatenate([zeros, np.cumsum(np.where(valid, x * x, 0.0))])
    last = np.arange(1, len(x) + 1)
    count = n[last] - n[first]
    total, squares = s[last] - s[first], q[last] - q[first]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        sd = np.sqrt(np.maximum(squares - total * mean, 0.0) / (count - 1))
    sd[count < 2] = np.nan
    return count.astype(np.int64), mean, sd


@pytest.mark.benchmark(group=ROLLING)
def test_rolling_numpy_cumsum(benchmark, spo2_times, spo2_series):
    result = benchmark(numpy_rolling, spo2_times, spo2_series, WINDOW)
    want = compiled.rolling(spo2_times, spo2_series, WINDOW)
    np.testing.assert_array_equal(result[0], want[0])
    assert_close(result[1], want[1])
    assert_close(result[2], want[2], rtol=1e-7)  # cancellation in sum of squares


# --- EWMA ---------------------------------------------------------------------------------------

EWMA = "EWMA span 12, 525,600 samples"


@pytest.mark.benchmark(group=EWMA)
def test_ewma_compiled(benchmark, spo2_series):
    benchmark(compiled.ewma, spo2_series, ALPHA)


@pytest.mark.benchmark(group=EWMA)
def test_ewma_telemon_dsp_api(benchmark, spo2_times, spo2_series):
    result = benchmark(dsp.ewma, spo2_times, spo2_series, span=FAST)
    np.testing.assert_array_equal(result, compiled.ewma(spo2_series, ALPHA))


@pytest.mark.benchmark(group=EWMA)
def test_ewma_reference_python_loop(benchmark, spo2_series):
    """The NumPy peer: NumPy has no recurrence primitive. The compiled EWMA runs in
    segments and agrees to rounding (1e-12 of the values' scale, see the suite)."""
    result = benchmark.pedantic(reference.ewma, args=(spo2_series, ALPHA), rounds=3)
    assert_close(result, compiled.ewma(spo2_series, ALPHA), rtol=1e-12)


@pytest.mark.benchmark(group=EWMA)
def test_ewma_pandas(benchmark, spo2_pandas, spo2_series):
    result = benchmark(lambda s: s.ewm(span=FAST, adjust=False, ignore_na=True).mean(),
                       spo2_pandas)
    assert_close(result.to_numpy(), compiled.ewma(spo2_series, ALPHA), rtol=1e-12)


@pytest.mark.benchmark(group=EWMA)
def test_ewma_memory_floor_copy(benchmark, spo2_series):
    """Not an EWMA: a copy of the input, the memory traffic (read one column, write one) of
    any EWMA that returns a new array. pandas' time over this is the most any can gain."""
    result = benchmark(np.copy, spo2_series)
    assert result is not spo2_series
    np.testing.assert_array_equal(result, spo2_series)


# --- MACD ---------------------------------------------------------------------------------------

MACD = "MACD 12/26/9, 525,600 samples"


@pytest.mark.benchmark(group=MACD)
def test_macd_compiled(benchmark, spo2_series):
    benchmark(compiled.macd, spo2_series, *MACD_ALPHAS)


@pytest.mark.benchmark(group=MACD)
def test_macd_telemon_dsp_api(benchmark, spo2_times, spo2_series):
    result = benchmark(dsp.macd, spo2_times, spo2_series, fast=FAST, slow=SLOW, signal=SIGNAL)
    for got, expected in zip(result, compiled.macd(spo2_series, *MACD_ALPHAS), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.benchmark(group=MACD)
def test_macd_reference_python_loop(benchmark, spo2_series):
    result = benchmark.pedantic(reference.macd, args=(spo2_series, *MACD_ALPHAS), rounds=1)
    for got, expected in zip(result, compiled.macd(spo2_series, *MACD_ALPHAS), strict=True):
        np.testing.assert_array_equal(got, expected)


def pandas_macd(series):
    """Three ewm(); the signal line skips NaN samples as telemon does (ignore_na on the MACD
    line masked where the value is NaN)."""

    def ema(s, span):
        return s.ewm(span=span, adjust=False, ignore_na=True).mean()

    line = ema(series, FAST) - ema(series, SLOW)
    signal = ema(line.where(series.notna()), SIGNAL)
    return line, signal, line - signal


@pytest.mark.benchmark(group=MACD)
def test_macd_pandas(benchmark, spo2_pandas, spo2_series):
    result = benchmark(pandas_macd, spo2_pandas)
    for got, expected in zip(result, compiled.macd(spo2_series, *MACD_ALPHAS), strict=True):
        assert_close(got.to_numpy(), expected, rtol=1e-9)


@pytest.mark.benchmark(group=MACD)
def test_macd_memory_floor_three_columns(benchmark, spo2_series):
    """Not a MACD: the input written to three new columns, the memory traffic of any MACD
    that returns its three lines as new arrays."""
    result = benchmark(np.repeat, spo2_series[None, :], 3, axis=0)
    assert result.shape == (3, spo2_series.size)
    np.testing.assert_array_equal(result[2], spo2_series)


# --- CUSUM --------------------------------------------------------------------------------------

CUSUM_GROUP = "CUSUM two-sided k=0.5 h=5, 525,600 samples"
CUSUM_ARGS = (CUSUM["mu"], CUSUM["sigma"], CUSUM["k"], CUSUM["h"], True, True)


@pytest.mark.benchmark(group=CUSUM_GROUP)
def test_cusum_compiled(benchmark, spo2_series):
    result = benchmark(compiled.cusum, spo2_series, *CUSUM_ARGS)
    assert (result[2] != 0).sum() > 100  # alarms happen: the reset path is exercised


@pytest.mark.benchmark(group=CUSUM_GROUP)
def test_cusum_telemon_dsp_api(benchmark, spo2_times, spo2_series):
    result = benchmark(dsp.cusum, spo2_times, spo2_series, **CUSUM)
    for got, expected in zip(result, compiled.cusum(spo2_series, *CUSUM_ARGS), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.benchmark(group=CUSUM_GROUP)
def test_cusum_reference_python_loop(benchmark, spo2_series):
    result = benchmark.pedantic(reference.cusum, args=(spo2_series, *CUSUM_ARGS), rounds=1)
    for got, expected in zip(result, compiled.cusum(spo2_series, *CUSUM_ARGS), strict=True):
        np.testing.assert_array_equal(got, expected)


# CUSUM without restarts: the statistic alone, as pandas and NumPy compute it. Until the first
# alarm, max(0, S + s) over the steps s equals C - min(0, running min of C) with C their
# cumulative sum, which both do in whole-array passes; a restart after each alarm they cannot.
# So h is out of reach here (no alarm, no restart) and the results agree to the cumulative
# sum's rounding.

CUSUM_PAGE_GROUP = "CUSUM statistic, two-sided k=0.5 without restarts, 525,600 samples"
NO_RESTART = (CUSUM["mu"], CUSUM["sigma"], CUSUM["k"], 1e18, True, True)


def numpy_cusum(values):
    z = (values - CUSUM["mu"]) / CUSUM["sigma"]

    def side(steps):
        c = np.cumsum(np.where(np.isnan(steps), 0.0, steps))
        return c - np.minimum(np.minimum.accumulate(c), 0.0)

    return side(z - CUSUM["k"]), side(-z - CUSUM["k"])


def pandas_cusum(series):
    z = (series - CUSUM["mu"]) / CUSUM["sigma"]

    def side(steps):
        c = steps.fillna(0.0).cumsum()
        return c - c.cummin().clip(upper=0.0)

    return side(z - CUSUM["k"]), side(-z - CUSUM["k"])


def assert_same_statistic(got, values):
    upper, lower, alarm = compiled.cusum(values, *NO_RESTART)
    assert not alarm.any()
    for side, expected in zip(got, (upper, lower), strict=True):
        side = side.to_numpy() if hasattr(side, "to_numpy") else side
        np.testing.assert_allclose(side, expected, rtol=0, atol=1e-8)


@pytest.mark.benchmark(group=CUSUM_PAGE_GROUP)
def test_cusum_no_restart_compiled(benchmark, spo2_series):
    result = benchmark(compiled.cusum, spo2_series, *NO_RESTART)
    assert result[0].max() > 5  # would have alarmed at h=5


@pytest.mark.benchmark(group=CUSUM_PAGE_GROUP)
def test_cusum_no_restart_pandas_cumsum(benchmark, spo2_pandas, spo2_series):
    assert_same_statistic(benchmark(pandas_cusum, spo2_pandas), spo2_series)


@pytest.mark.benchmark(group=CUSUM_PAGE_GROUP)
def test_cusum_no_restart_numpy_cumsum(benchmark, spo2_series):
    assert_same_statistic(benchmark(numpy_cusum, spo2_series), spo2_series)


# --- the alarm engine's working size: 5,000 samples ----------------------------------------------

ENGINE = f"{MAX_SERIES:,} samples, alarm engine size"
ROLLING_ENGINE = f"rolling 3-day count/mean/SD/min/max, {ENGINE}"
EWMA_ENGINE = f"EWMA span 12, {ENGINE}"
MACD_ENGINE = f"MACD 12/26/9, {ENGINE}"
CUSUM_ENGINE = f"CUSUM statistic, two-sided k=0.5 without restarts, {ENGINE}"


@pytest.mark.benchmark(group=ROLLING_ENGINE)
def test_engine_rolling_compiled(benchmark, engine_times, engine_series):
    result = benchmark(compiled.rolling, engine_times, engine_series, WINDOW)
    assert result[0].max() > 3000


@pytest.mark.benchmark(group=ROLLING_ENGINE)
def test_engine_rolling_telemon_dsp_api(benchmark, engine_times, engine_series):
    result = benchmark(dsp.rolling, engine_times, engine_series, window=WINDOW)
    for got, expected in zip(result, compiled.rolling(engine_times, engine_series, WINDOW),
                             strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.benchmark(group=ROLLING_ENGINE)
def test_engine_rolling_pandas(benchmark, engine_pandas, engine_times, engine_series):
    def pandas_rolling(series):
        window = series.rolling("3D")
        return window.count(), window.mean(), window.std(), window.min(), window.max()

    result = benchmark(pandas_rolling, engine_pandas)
    want = compiled.rolling(engine_times, engine_series, WINDOW)
    for got, expected in zip(result, want, strict=True):
        assert_close(got.to_numpy(), expected)


@pytest.mark.benchmark(group=ROLLING_ENGINE)
def test_engine_rolling_numpy_cumsum(benchmark, engine_times, engine_series):
    result = benchmark(numpy_rolling, engine_times, engine_series, WINDOW)
    want = compiled.rolling(engine_times, engine_series, WINDOW)
    np.testing.assert_array_equal(result[0], want[0])
    assert_close(result[1], want[1])
    assert_close(result[2], want[2], rtol=1e-7)


@pytest.mark.benchmark(group=EWMA_ENGINE)
def test_engine_ewma_compiled(benchmark, engine_series):
    benchmark(compiled.ewma, engine_series, ALPHA)


@pytest.mark.benchmark(group=EWMA_ENGINE)
def test_engine_ewma_telemon_dsp_api(benchmark, engine_times, engine_series):
    result = benchmark(dsp.ewma, engine_times, engine_series, span=FAST)
    np.testing.assert_array_equal(result, compiled.ewma(engine_series, ALPHA))


@pytest.mark.benchmark(group=EWMA_ENGINE)
def test_engine_ewma_pandas(benchmark, engine_pandas, engine_series):
    result = benchmark(lambda s: s.ewm(span=FAST, adjust=False, ignore_na=True).mean(),
                       engine_pandas)
    assert_close(result.to_numpy(), compiled.ewma(engine_series, ALPHA), rtol=1e-12)


@pytest.mark.benchmark(group=EWMA_ENGINE)
def test_engine_ewma_reference_python_loop(benchmark, engine_series):
    result = benchmark(reference.ewma, engine_series, ALPHA)
    assert_close(result, compiled.ewma(engine_series, ALPHA), rtol=1e-12)


@pytest.mark.benchmark(group=MACD_ENGINE)
def test_engine_macd_compiled(benchmark, engine_series):
    benchmark(compiled.macd, engine_series, *MACD_ALPHAS)


@pytest.mark.benchmark(group=MACD_ENGINE)
def test_engine_macd_telemon_dsp_api(benchmark, engine_times, engine_series):
    result = benchmark(dsp.macd, engine_times, engine_series, fast=FAST, slow=SLOW,
                       signal=SIGNAL)
    for got, expected in zip(result, compiled.macd(engine_series, *MACD_ALPHAS), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.benchmark(group=MACD_ENGINE)
def test_engine_macd_pandas(benchmark, engine_pandas, engine_series):
    result = benchmark(pandas_macd, engine_pandas)
    for got, expected in zip(result, compiled.macd(engine_series, *MACD_ALPHAS), strict=True):
        assert_close(got.to_numpy(), expected, rtol=1e-9)


@pytest.mark.benchmark(group=MACD_ENGINE)
def test_engine_macd_reference_python_loop(benchmark, engine_series):
    result = benchmark(reference.macd, engine_series, *MACD_ALPHAS)
    for got, expected in zip(result, compiled.macd(engine_series, *MACD_ALPHAS), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.benchmark(group=CUSUM_ENGINE)
def test_engine_cusum_no_restart_compiled(benchmark, engine_series):
    benchmark(compiled.cusum, engine_series, *NO_RESTART)


@pytest.mark.benchmark(group=CUSUM_ENGINE)
def test_engine_cusum_no_restart_telemon_dsp_api(benchmark, engine_times, engine_series):
    result = benchmark(dsp.cusum, engine_times, engine_series, mu=CUSUM["mu"],
                       sigma=CUSUM["sigma"], k=CUSUM["k"], h=NO_RESTART[3])
    assert_same_statistic(result[:2], engine_series)


@pytest.mark.benchmark(group=CUSUM_ENGINE)
def test_engine_cusum_no_restart_pandas_cumsum(benchmark, engine_pandas, engine_series):
    assert_same_statistic(benchmark(pandas_cusum, engine_pandas), engine_series)


@pytest.mark.benchmark(group=CUSUM_ENGINE)
def test_engine_cusum_no_restart_numpy_cumsum(benchmark, engine_series):
    assert_same_statistic(benchmark(numpy_cusum, engine_series), engine_series)
