"""Kernels over timestamped series: limits, thresholds, rolling statistics, trends, schedules.

Every primitive comes twice, with the same answers:

* a batch function over a whole series, `f(times, values, ...)`, and
* a streaming class, `F(...)`, whose `update(times, values)` takes one sample (scalars, and
  returns scalars) or a batch (arrays, returns arrays) and carries its state across calls.
  Feeding a series to `update` in chunks of any size gives exactly the batch answer.

Conventions (checked here once, with an error naming the first offending sample):

* `times`: seconds (any epoch), float64, finite, non-decreasing; equal times are allowed.
  Sampling may be irregular, with gaps. A stream rejects a time before the last one it saw.
* `values`: float64, same length; NaN means "no value" (a failed or missing measurement) and
  is skipped by every statistic. +/-inf is rejected: a device never measures infinity, and
  one infinite value would poison every average after it.
* Windows are in seconds, not samples: a sample's window `(t - w, t]` holds the samples up
  to and including it (by position) whose time is after `t - w`.
* Averages (EWMA, MACD) and CUSUM advance per sample, not per second: a missed day does not
  decay them. Use `missed_deadlines` to see missing data.

The kernels are in telemon.cext: compiled (`_series`) or the NumPy reference
(`series_reference`, the specification, chosen with TELEMON_PUREPYTHON=1).
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import NamedTuple

import numpy as np

from telemon.dsp._select import kernels

_k = kernels("series")

__all__ = [
    "CUSUM",
    "DAY",
    "EWMA",
    "HOUR",
    "MACD",
    "MINUTE",
    "NO_VALUE",
    "CUSUMStats",
    "Change",
    "Changes",
    "ControlBand",
    "MACDLines",
    "Rolling",
    "RollingStats",
    "SPCBand",
    "Schedule",
    "Threshold",
    "as_series",
    "as_timed_series",
    "change",
    "cusum",
    "ewma",
    "limit_bands",
    "limit_order_problem",
    "macd",
    "missed_deadlines",
    "rolling",
    "spc_band",
    "threshold",
]

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
"""Seconds, for windows and lags: `rolling(t, x, window=3 * DAY)`."""

NO_VALUE = -128
"""Band of a NaN sample: there is no value to compare."""

MAX_PERIODS = 10_000_000
"""Most schedule periods one call may decide (a guard against a period given in the wrong
unit, e.g. 1 for one day, turning a check into a billion-step loop)."""


# --- results ----------------------------------------------------------------------------------


class RollingStats(NamedTuple):
    """Per sample, over the non-NaN values in its window. mean/min/max are NaN when count
    is 0, sd (sample SD, ddof=1) when count < 2."""

    count: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    min: np.ndarray
    max: np.ndarray


class ControlBand(NamedTuple):
    """Per sample, from the window before it (the sample itself excluded): count of values,
    their mean and SD, and lower/upper = mean -/+ k·SD. All but count are NaN while count <
    min_count."""

    count: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


class Changes(NamedTuple):
    """Per sample: value minus the reference value, and the reference sample's time
    (both NaN when there is no reference or the value is NaN)."""

    delta: np.ndarray
    reference_time: np.ndarray


class MACDLines(NamedTuple):
    macd: np.ndarray
    signal: np.ndarray
    histogram: np.ndarray


class CUSUMStats(NamedTuple):
    """Per sample: the upper and lower statistics (at an alarm, the value that exceeded h;
    they restart from 0 after it) and the alarm (1 upper, -1 lower, 0 none)."""

    upper: np.ndarray
    lower: np.ndarray
    alarm: np.ndarray


# --- input checks -------------------------------------------------------------------------------


def as_series(values, name: str = "values") -> np.ndarray:
    """Return `values` as a contiguous 1-D float64 array, or raise ValueError saying why not."""
    try:
        arr = np.ascontiguousarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: must be numbers, got {type(values).__name__} ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be one-dimensional, got shape {arr.shape}")
    return arr


def as_timed_series(times, values) -> tuple[np.ndarray, np.ndarray]:
    """`(times, values)` as float64 arrays after the checks every series primitive needs:
    same length, times finite and non-decreasing, values finite or NaN."""
    t, x = as_series(times, "times"), as_series(values, "values")
    if len(t) != len(x):
        raise ValueError(f"times and values: lengths differ ({len(t)} != {len(x)})")
    _raise_problem(t, x)
    return t, x


def _raise_problem(t: np.ndarray, x: np.ndarray) -> None:
    code, i = _k.check_series(t, x)
    if code == 1:
        raise ValueError(f"times[{i}] is {float(t[i])}: times must be finite seconds")
    if code == 2:
        raise ValueError(f"times must be non-decreasing: times[{i}]={float(t[i])!r} is "
                         f"before times[{i - 1}]={float(t[i - 1])!r}")
    if code == 3:
        raise ValueError(f"values[{i}] is {float(x[i])}: values must be finite "
                         "(NaN for a missing value)")


# The parameter checks run on every call, and the alarm engine calls with a few readings:
# plain float and int (the usual case) skip the numbers-ABC isinstance checks. The
# answers and messages are the same either way.


def _number(name: str, value) -> float:
    cls = type(value)
    if cls is not float and cls is not int and \
            (not isinstance(value, numbers.Real) or isinstance(value, bool)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name}: must be a number, got nan")
    return value


def _finite(name: str, value) -> float:
    value = _number(name, value)
    if value == _INF or value == -_INF:
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def _positive(name: str, value, *, allow_inf: bool = False) -> float:
    value = _number(name, value) if allow_inf else _finite(name, value)
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return value


def _non_negative(name: str, value) -> float:
    value = _finite(name, value)
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


_INF = math.inf


def _optional_limit(name: str, value) -> float:
    return math.nan if value is None else _finite(name, value)


# --- limits -------------------------------------------------------------------------------------


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


# --- streaming ----------------------------------------------------------------------------------


class _Stream:
    """Checks each batch (and that it does not start before the last sample seen), hands it
    to the kernel state `_state`, and unwraps the outputs of a single scalar sample."""

    _state: object
    _last_time = -math.inf

    def update(self, times, values):
        scalar = np.ndim(times) == 0 and np.ndim(values) == 0
        t, x = as_timed_series(np.atleast_1d(times), np.atleast_1d(values))
        if len(t) and t[0] < self._last_time:
            raise ValueError(f"times[0]={float(t[0])!r} is before the last sample seen "
                             f"({self._last_time!r}): a stream cannot go back in time")
        out = self._feed(t, x)
        if len(t):
            self._last_time = float(t[-1])
        if not scalar:
            return out
        if isinstance(out, tuple):
            return type(out)(*(column[0].item() for column in out))
        return out[0].item()

    def _feed(self, t, x):
        return self._state.update(t, x)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} last time {self._last_time}>"


# --- threshold with hysteresis and a sustain time -----------------------------------------------


def _threshold_params(high, low, hysteresis, sustain):
    high = _optional_limit("high", high)
    low = _optional_limit("low", low)
    if math.isnan(high) and math.isnan(low):
        raise ValueError("threshold: give high, low or both")
    hysteresis = _non_negative("hysteresis", hysteresis)
    sustain = _non_negative("sustain", sustain)
    if low + hysteresis > high - hysteresis:  # False when either is unset (NaN)
        raise ValueError(f"low + hysteresis ({low} + {hysteresis}) must not exceed high - "
                         f"hysteresis ({high} - {hysteresis}): the alarms would overlap")
    return high, low, hysteresis, sustain


def threshold(times, values, *, high=None, low=None, hysteresis=0.0, sustain=0.0):
    """Alarm state per sample (int8): 1 high alarm on, -1 low alarm on, 0 none.

    The high alarm switches on at the first sample at which the value has been above `high`
    (strictly) at every sample of a run that began at least `sustain` seconds earlier,
    measured on sample times (`sustain=0`: at the first sample above). A sample at or below
    `high` before then ends the run: a short excursion never alarms. Once on, the alarm stays
    on until a sample at or below `high - hysteresis`. The low alarm mirrors this below
    `low`, switching off at or above `low + hysteresis`. Either threshold may be None.

    NaN samples are skipped: they neither start, extend, break nor end anything, and the
    output there is the state so far. Clinically safer than either alternative: a dropout
    (probe off) during a real desaturation must neither silence an alarm that is on nor
    restart the sustain clock of one about to come on. Missing data is reported by
    `missed_deadlines`. Because the run is measured on sample times, two samples above
    `high` with a gap between them count as a run over the gap.
    """
    t, x = as_timed_series(times, values)
    return _k.threshold(t, x, *_threshold_params(high, low, hysteresis, sustain))


class Threshold(_Stream):
    """Streaming `threshold`: `update(t, x)` returns the alarm state for those samples."""

    def __init__(self, *, high=None, low=None, hysteresis=0.0, sustain=0.0):
        self._state = _k.ThresholdState(*_threshold_params(high, low, hysteresis, sustain))


# --- rolling statistics over a time window ------------------------------------------------------


def rolling(times, values, *, window) -> RollingStats:
    """Count, mean, SD (ddof=1), min and max of the non-NaN values in each sample's window
    `(t - window, t]` (seconds; `inf` = everything so far). See RollingStats for NaNs."""
    t, x = as_timed_series(times, values)
    return RollingStats(*_k.rolling(t, x, _positive("window", window, allow_inf=True)))


class Rolling(_Stream):
    """Streaming `rolling`: keeps only the samples still inside the window."""

    def __init__(self, window):
        self._state = _k.RollingState(_positive("window", window, allow_inf=True))

    def _feed(self, t, x):
        return RollingStats(*self._state.update(t, x))


# --- statistical-process-control band -----------------------------------------------------------


def _band_params(window, k, min_count):
    window = _positive("window", window, allow_inf=True)
    k = _non_negative("k", k)
    if (type(min_count) is not int and (not isinstance(min_count, numbers.Integral)
                                        or isinstance(min_count, bool))) or min_count < 2:
        raise ValueError(f"min_count: must be an integer >= 2 (an SD needs two values), "
                         f"got {min_count!r}")
    return window, k, int(min_count)


def spc_band(times, values, *, window, k, min_count) -> ControlBand:
    """The patient's own control band before each sample: mean -/+ k·SD of the non-NaN values
    of the earlier samples (by position) in `(t - window, t]`, the sample itself excluded so
    an outlier cannot widen its own band. NaN until `min_count` values are there.

    E.g. COPD: FEV1 below its 7-day mean - 1.645 SD (Cooper et al. 2020) is
    `x < spc_band(t, x, window=7 * DAY, k=1.645, min_count=...).lower`.
    """
    t, x = as_timed_series(times, values)
    return ControlBand(*_k.spc_band(t, x, *_band_params(window, k, min_count)))


class SPCBand(_Stream):
    """Streaming `spc_band`."""

    def __init__(self, *, window, k, min_count):
        self._state = _k.SPCBandState(*_band_params(window, k, min_count))

    def _feed(self, t, x):
        return ControlBand(*self._state.update(t, x))


# --- change over a time lag ---------------------------------------------------------------------


def _change_params(lag, tolerance):
    return _positive("lag", lag), _non_negative("tolerance", tolerance)


def change(times, values, *, lag, tolerance=0.0) -> Changes:
    """Value now minus the value `lag` seconds ago, tolerating missing samples.

    The reference is the latest non-NaN sample at or before `t - lag` (the last one by
    position when times tie), provided it is no older than `t - lag - tolerance`; otherwise
    (and where the value is NaN) delta is NaN. E.g. weight gain over 3 days with up to a
    day missing: `change(t, w, lag=3 * DAY, tolerance=DAY)`. Measuring times jitter: for
    a daily scale, a lag a little under the nominal one (3 days - 2 h) keeps yesterday's
    slightly later weighing eligible.
    """
    t, x = as_timed_series(times, values)
    return Changes(*_k.change(t, x, *_change_params(lag, tolerance)))


class Change(_Stream):
    """Streaming `change`: keeps the samples younger than `lag` plus one reference."""

    def __init__(self, *, lag, tolerance=0.0):
        self._state = _k.ChangeState(*_change_params(lag, tolerance))

    def _feed(self, t, x):
        return Changes(*self._state.update(t, x))


# --- exponentially weighted averages ------------------------------------------------------------


def _alpha(alpha=None, span=None) -> float:
    if (alpha is None) == (span is None):
        raise ValueError("give exactly one of alpha and span")
    if alpha is not None:
        alpha = _finite("alpha", alpha)
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha}")
        return alpha
    return 2.0 / (_span("span", span) + 1.0)


def _span(name, span) -> float:
    span = _finite(name, span)
    if span < 1:
        raise ValueError(f"{name}: must be >= 1 (samples), got {span}")
    return span


def ewma(times, values, *, alpha=None, span=None) -> np.ndarray:
    """Exponentially weighted moving average per sample: z = alpha·x + (1 - alpha)·z,
    starting at the first non-NaN value; `span` N gives alpha = 2/(N + 1) (CLINICAL.md).

    A NaN sample leaves z unchanged and the output there is z (NaN before the first value).
    Per sample, not per second. `times` are checked (the same series as every other
    primitive) but do not enter the average.
    """
    _, x = as_timed_series(times, values)
    return _k.ewma(x, _alpha(alpha, span))


class EWMA(_Stream):
    """Streaming `ewma`."""

    def __init__(self, *, alpha=None, span=None):
        self._state = _k.EWMAState(_alpha(alpha, span))

    def _feed(self, t, x):
        return self._state.update(x)


def _macd_params(fast, slow, signal):
    fast, slow = _span("fast", fast), _span("slow", slow)
    if not fast < slow:
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")
    signal = _span("signal", signal)
    return 2.0 / (fast + 1.0), 2.0 / (slow + 1.0), 2.0 / (signal + 1.0)


def macd(times, values, *, fast, slow, signal) -> MACDLines:
    """MACD = EWMA(span fast) - EWMA(span slow); signal = EWMA(span signal) of MACD;
    histogram = MACD - signal. Spans in samples (e.g. 12, 26, 9; for daily weights tune them:
    Zhang et al. 2009, Gyllensten et al. 2016). An alarm rule compares MACD or the histogram
    with a threshold. NaN samples are skipped as in `ewma`."""
    _, x = as_timed_series(times, values)
    return MACDLines(*_k.macd(x, *_macd_params(fast, slow, signal)))


class MACD(_Stream):
    """Streaming `macd`."""

    def __init__(self, *, fast, slow, signal):
        self._state = _k.MACDState(*_macd_params(fast, slow, signal))

    def _feed(self, t, x):
        return MACDLines(*self._state.update(x))


# --- CUSUM --------------------------------------------------------------------------------------

_SIDES = {"both": (True, True), "upper": (True, False), "lower": (False, True)}


def _cusum_params(mu, sigma, k, h, side):
    if side not in _SIDES:
        raise ValueError(f"side: must be one of {sorted(_SIDES)}, got {side!r}")
    return (_finite("mu", mu), _positive("sigma", sigma), _non_negative("k", k),
            _non_negative("h", h), *_SIDES[side])


def cusum(times, values, *, mu, sigma, k, h, side="both") -> CUSUMStats:
    """Tabular CUSUM on z = (x - mu)/sigma, with mu and sigma from the patient's baseline:

        upper = max(0, upper + z - k)     lower = max(0, lower - z - k)

    When a statistic exceeds h the sample's alarm is 1 (upper) or -1 (lower) and that
    statistic restarts from 0 at the next sample (CLINICAL.md). `side` "upper" or "lower"
    runs one side only (the other stays 0). k >= 0, so both sides never alarm at once.
    NaN samples change nothing; the outputs there repeat the state.
    """
    _, x = as_timed_series(times, values)
    return CUSUMStats(*_k.cusum(x, *_cusum_params(mu, sigma, k, h, side)))


class CUSUM(_Stream):
    """Streaming `cusum`."""

    def __init__(self, *, mu, sigma, k, h, side="both"):
        self._state = _k.CUSUMState(*_cusum_params(mu, sigma, k, h, side))

    def _feed(self, t, x):
        return CUSUMStats(*self._state.update(x))


# --- missed measurements against a schedule -----------------------------------------------------


def _schedule_params(start, period, deadline, grace):
    start, period = _finite("start", start), _positive("period", period)
    deadline, grace = _non_negative("deadline", deadline), _non_negative("grace", grace)
    if deadline > period:
        raise ValueError(f"deadline ({deadline}) must lie within the period ({period})")
    return start, period, deadline, grace


def _usable_times(times, values) -> np.ndarray:
    if values is None:
        t = as_series(times, "times")
        _raise_problem(t, t)
        return t
    t, x = as_timed_series(times, values)
    return t[~np.isnan(x)]


def _check_periods(start, period, deadline, grace, now):
    periods = (now - (start + deadline + grace)) / period
    if periods > MAX_PERIODS:
        raise ValueError(f"now: {periods:.3g} periods of {period} s to decide (more than "
                         f"{MAX_PERIODS}); is the period in seconds?")


def missed_deadlines(times, values=None, *, start, period, deadline, grace=0.0, now):
    """Deadlines that passed with no measurement: the "missing" triage.

    Period k (k = 0, 1, ...) starts at `start + k·period`; its deadline is `deadline`
    seconds into it. It counts as missed when its cut-off (deadline + `grace`) is before
    `now` and no sample time lies in [period start, cut-off]; a sample after the cut-off is
    late and does not count. With `values`, NaN samples (failed measurements) do not count.
    Returns the missed deadlines' times (float64, ascending).

    The period is fixed seconds: a local-time schedule across a DST change needs `start`
    per stretch of constant offset.
    """
    params = _schedule_params(start, period, deadline, grace)
    now = _finite("now", now)
    _check_periods(*params, now)
    return _k.missed_deadlines(_usable_times(times, values), *params, now)


class Schedule:
    """Streaming `missed_deadlines`: `update(times, values=None)` records measurements,
    `missed(now)` returns the deadlines newly passed without one since the last call.

    Sample times must not go backwards, nor `now`. A sample that arrives after its
    period was reported missed (time before that call's `now`) does not retract the report;
    with every sample recorded before asking, the reports add up to `missed_deadlines`.
    """

    def __init__(self, *, start, period, deadline, grace=0.0):
        self._params = _schedule_params(start, period, deadline, grace)
        self._state = _k.ScheduleState(*self._params)
        self._last_time = -math.inf
        self._last_now = -math.inf

    def update(self, times, values=None) -> None:
        t = _usable_times(np.atleast_1d(times),
                          None if values is None else np.atleast_1d(values))
        if len(t) and t[0] < self._last_time:
            raise ValueError(f"times[0]={float(t[0])!r} is before the last sample seen "
                             f"({self._last_time!r}): a stream cannot go back in time")
        self._state.update(t)
        if len(t):
            self._last_time = float(t[-1])

    def missed(self, now) -> np.ndarray:
        now = _finite("now", now)
        if now < self._last_now:
            raise ValueError(f"now={now!r} is before the previous now ({self._last_now!r})")
        _check_periods(*self._params, now)
        self._last_now = now
        return self._state.missed(now)
