"""NumPy reference of the compiled waveform kernels (_waveform.pyx): same functions, same answers.

Selected with TELEMON_PUREPYTHON=1; the suite runs both ways and compares them directly. This
file is the specification: the C twin does the same operations in the same order.

Why the two agree sample for sample: the input is quantised once, `floor(v * (1/step))`
clipped (v the sample, or for QRS detection the sum of a block of samples added left to
right, the same float operations in both), NaN holding the last valid sample. From there
every filter stage is a sum or difference of integers (cascaded boxcars, a derivative, a
square, moving sums) and every threshold an integer updated with shifts. Integer arithmetic
is exact, so the summation order (cumsum here, running sums there) and the compiler (FMA
contraction, vectorisation) cannot change a result, and the decision logic walks the same
candidates with the same integer rules. The R peak is placed on the raw float samples by
comparisons only (exact). Floating point arithmetic is left only where no decision hangs on
its last bit: the RR-window features (`rr_features`), compared to 1e-12 in the suite.

Called only through telemon.dsp, which validates: 1-D contiguous float64, fs > 0, step > 0.
"""

from __future__ import annotations

import math

import numpy as np

LIMIT = 1 << 15
"""Quantised samples are clipped to +-LIMIT. telemon.dsp picks `step` so that the signal's
robust amplitude is ~1024 units: clipping starts at ~32 times that amplitude."""


def span(fs, ms):
    """Samples in `ms` milliseconds at `fs`, at least 1 (the same float operations as in C)."""
    n = int(fs * ms / 1000.0 + 0.5)
    return n if n > 1 else 1


def quantize(x, step):
    """floor(x * (1/step)) clipped to +-LIMIT, as int64. NaN holds the last valid sample
    (leading NaN take the first valid one; all NaN give 0)."""
    inv = 1.0 / step
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.floor(np.clip(x * inv, -LIMIT, LIMIT))
    nan = np.isnan(v)
    if nan.any():
        valid = np.flatnonzero(~nan)
        if valid.size == 0:
            return np.zeros(len(v), dtype=np.int64)
        idx = np.where(nan, 0, np.arange(len(v)))
        np.maximum.accumulate(idx, out=idx)
        idx[: valid[0]] = valid[0]
        v = v[idx]
    return v.astype(np.int64)


def _boxsum(a, length):
    """Causal moving sum: s[n] = a[n] + ... + a[n-length+1], with a[j] = a[0] for j < 0."""
    c = np.cumsum(np.concatenate([np.full(length, a[0]), a]))
    return c[length:] - c[:-length]


def _centred_sum(a, half, edge):
    """s[n] = a[n-half] + ... + a[n+half]; outside a, a[0] / a[-1] (edge) or 0 (not edge)."""
    left = np.full(half, a[0] if edge else 0, dtype=np.int64)
    right = np.full(half, a[-1] if edge else 0, dtype=np.int64)
    c = np.concatenate([[0], np.cumsum(np.concatenate([left, a, right]))])
    return c[2 * half + 1:] - c[: len(a)]


def _lag(a, k):
    """a[n - k], with a[j] = a[0] for j < 0."""
    k = min(k, len(a))
    return np.concatenate([np.full(k, a[0]), a[: len(a) - k]])


def _window_max(v, lo, hi):
    """out[i] = max(v[i+lo .. i+hi]) over the indices inside v, -1 where there are none
    (v >= 0). Van Herk / Gil-Werman block prefix and suffix maxima: O(n)."""
    size = hi - lo + 1
    n = len(v)
    total = n + 2 * size
    blocks = -(-total // size)
    padded = np.full(blocks * size, -1, dtype=np.int64)
    padded[size: size + n] = v
    grid = padded.reshape(blocks, size)
    prefix = np.maximum.accumulate(grid, axis=1).ravel()
    suffix = np.maximum.accumulate(grid[:, ::-1], axis=1)[:, ::-1].ravel()
    start = size + np.arange(n) + lo
    return np.maximum(suffix[start], prefix[start + size - 1])


def _dominant_peaks(v, radius):
    """Indices p with v[p] > 0, v[p] > every v in [p-radius, p) and v[p] >= every v in
    (p, p+radius] (indices outside v ignored): at most one per radius, the first on ties."""
    before = _window_max(v, -radius, -1)
    after = _window_max(v, 1, radius)
    return np.flatnonzero((v > 0) & (v > before) & (v >= after))


# --------------------------------------------------------------------------------------- QRS


class QrsPlan:
    """Stage lengths in samples for one sampling rate. The ECG is first summed over blocks of
    `decim` samples (a boxcar decimator) down to 120-240 Hz; the stages then follow Pan &
    Tompkins (1985) at that rate: their 6+6-sample low-pass, 32-sample high-pass and
    30-sample integration window at 200 Hz, scaled."""

    def __init__(self, fs):
        self.decim = max(1, int(fs / 120.0))
        f = fs / self.decim
        self.lp = span(f, 30.0)               # two cascaded 30 ms boxcars: low-pass ~11 Hz
        self.hp = 2 * span(f, 80.0) + 1       # centre tap minus the 160 ms mean: high-pass ~5 Hz
        self.shift = (self.lp * self.lp * self.hp * self.decim).bit_length() - 1
        self.deriv = span(f, 20.0)            # d[n] = bp[n] - bp[n-k]
        self.window = span(f, 150.0)          # moving-window integration of d^2
        self.radius = span(f, 200.0)          # refractory: one candidate per 200 ms
        self.twave = span(f, 360.0)           # T-wave slope check when closer than this
        self.learn = span(f, 2000.0)          # thresholds initialised over the first 2 s
        self.second = span(f, 1000.0)         # RR assumed before one is measured
        self.delay = (2 * (self.lp - 1) + (self.hp - 1)) // 2   # group delay of the band-pass
        self.refine = span(fs, 20.0)          # R peak refined on the raw ECG within +-20 ms
        # The record is extended by its last value for this many decimated samples, so that
        # a QRS at the very end still passes through the (causal) stages and is confirmed.
        self.flush = self.delay + self.window + self.deriv + self.radius


def held(x):
    """x with NaN replaced by the last valid sample (leading NaN: the first valid one; all
    NaN: 0.0)."""
    nan = np.isnan(x)
    if not nan.any():
        return x
    valid = np.flatnonzero(~nan)
    if valid.size == 0:
        return np.zeros(len(x))
    idx = np.where(nan, 0, np.arange(len(x)))
    np.maximum.accumulate(idx, out=idx)
    idx[: valid[0]] = valid[0]
    return x[idx]


def decimate(x, d, step):
    """The ECG summed over blocks of `d` samples and quantised: floor(sum * (1/step)),
    clipped to +-d*LIMIT (a NaN product, from an infinite 1/step, gives 0). NaN samples hold
    the last valid one; a last, partial block is completed with its last sample. The sum
    runs left to right in float64, as in C."""
    n = len(x)
    m = -(-n // d)
    h = held(x)
    grid = np.concatenate([h, np.full(m * d - n, h[-1])]).reshape(m, d)
    inv = 1.0 / step
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.zeros(m)
        for j in range(d):
            total = total + grid[:, j]
        v = total * inv
        v[np.isnan(v)] = 0.0
        return np.floor(np.clip(v, -d * LIMIT, d * LIMIT)).astype(np.int64)


def _qrs_stages(u, plan):
    """Band-pass, derivative, square, integration of the decimated signal u (int64)."""
    b = _boxsum(_boxsum(u, plan.lp), plan.lp)
    hp = plan.hp * _lag(b, (plan.hp - 1) // 2) - _boxsum(b, plan.hp)
    bp = hp >> plan.shift
    d = bp - _lag(bp, plan.deriv)
    return bp, _boxsum(d * d, plan.window)


def qrs_filter(q, fs):
    """Band-passed signal and moving-window integral of its squared derivative (int64, at
    the decimated rate) of integer samples q (|q| <= LIMIT: their block sums are exact)."""
    plan = QrsPlan(fs)
    return _qrs_stages(decimate(np.asarray(q, dtype=np.float64), plan.decim, 1.0), plan)


def _flushed(x, plan, step):
    """The decimated ECG, extended by `plan.flush` copies of its last value."""
    u = decimate(x, plan.decim, step)
    return np.concatenate([u, np.full(plan.flush, u[-1])])


def qrs_candidates(x, fs, step):
    """Decimated-rate indices of the dominant peaks of the integrated signal."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    plan = QrsPlan(fs)
    _, mwi = _qrs_stages(_flushed(x, plan, step), plan)
    return _dominant_peaks(mwi, plan.radius)


def qrs_detect(x, fs, step):
    """R-peak sample indices (int64, increasing) of the ECG `x` sampled at `fs` Hz."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    plan = QrsPlan(fs)
    bp, mwi = _qrs_stages(_flushed(x, plan, step), plan)
    candidates = _dominant_peaks(mwi, plan.radius).tolist()
    return _qrs_decide(x, bp, mwi, candidates, plan)


def _slope(bp, p, plan):
    """Largest |bp[j] - bp[j-k]| in the integration window that ends at p."""
    j = np.arange(max(0, p - plan.window + 1), p + 1)
    return int(np.abs(bp[j] - bp[np.maximum(j - plan.deriv, 0)]).max())


def _r_peak(x, bp, p, plan):
    """R peak of the candidate at p: the largest |bp| under the window ending at p, moved back
    by the band-pass delay to the input rate, then the largest (or, for a negative |bp|
    maximum, smallest) raw sample within +-refine of it."""
    lo = max(0, p - plan.window - plan.deriv + 1)
    j = lo + int(np.argmax(np.abs(bp[lo: p + 1])))
    n = len(x)
    centre = min(max(j - plan.delay, 0), len(bp) - 1) * plan.decim + (plan.decim - 1) // 2
    centre = min(centre, n - 1)
    lo, hi = max(0, centre - plan.refine), min(n - 1, centre + plan.refine)
    seg = x[lo: hi + 1] if bp[j] >= 0 else -x[lo: hi + 1]
    if not np.isfinite(seg).any():
        return centre
    return lo + int(np.argmax(np.where(np.isnan(seg), -np.inf, seg)))


def _qrs_decide(x, bp, mwi, candidates, plan):
    """Pan & Tompkins' decision rules on the integrated signal, in integers: signal and noise
    peak levels (1/8 updates, clamped so one artefact moves them at most 2x), threshold a
    quarter of the way from noise to signal, T-wave rejection by slope within 360 ms,
    search-back at half threshold after 166 % of the mean of the last 8 RR, and decay of
    both levels while beats are missing (recovery after artefacts)."""
    m = len(bp)
    learn = mwi[: plan.learn]
    spk = int(learn.max()) // 3
    npk = int(learn.sum()) // len(learn) // 2
    rr = []
    last = -1
    last_slope = 0
    best = -1
    best_v = 0
    out = []
    for p in [*candidates, -1]:
        end = p < 0
        now = m if end else p
        since = last if last >= 0 else 0
        limit = (sum(rr) // len(rr) if rr else plan.second) * 166 // 100
        thr1 = npk + ((spk - npk) >> 2)
        if best >= 0 and now - since > limit and best_v > (thr1 >> 1):
            spk += (min(best_v, 2 * spk) - spk) >> 2
            if last >= 0:
                rr = [*rr[-7:], best - last]
            last, last_slope, best = best, _slope(bp, best, plan), -1
            out.append(_r_peak(x, bp, last, plan))
            since = last
            thr1 = npk + ((spk - npk) >> 2)
        if end:
            break
        v = int(mwi[p])
        twave = last >= 0 and p - last < plan.twave and 2 * _slope(bp, p, plan) < last_slope
        if v > thr1 and not twave:
            spk += ((v if spk <= 0 else min(v, 2 * spk)) - spk) >> 3
            if last >= 0:
                rr = [*rr[-7:], p - last]
            last, last_slope, best = p, _slope(bp, p, plan), -1
            out.append(_r_peak(x, bp, p, plan))
        else:
            npk += (min(v, spk) - npk) >> 3
            if p - since > limit:
                npk >>= 1
                spk = npk + ((spk - npk) >> 1)
            if not twave and (best < 0 or v > best_v):
                best, best_v = p, v
    peaks = []
    for r in out:
        if not peaks or r > peaks[-1]:
            peaks.append(r)
    return np.asarray(peaks, dtype=np.int64)


# --------------------------------------------------------------------------------------- PPG


class PulsePlan:
    """Stage lengths for one sampling rate: Elgendi et al. (2013) two event-related moving
    averages (111 ms and 667 ms, offset 0.02 x mean energy) on a 0.5-6 Hz band-pass."""

    def __init__(self, fs):
        self.lp = span(fs, 50.0)              # two cascaded 50 ms boxcars: low-pass ~6 Hz
        self.half = span(fs, 800.0)           # centred 1.6 s mean removed: high-pass ~0.5 Hz
        self.hp = 2 * self.half + 1
        self.shift = (self.lp * self.lp * self.hp).bit_length() - 1
        self.peak = span(fs, 55.0)            # half of the 111 ms event window
        self.beat = span(fs, 333.0)           # half of the 667 ms beat window
        self.refractory = span(fs, 300.0)     # two pulses closer than this: keep the larger
        self.delay = self.lp - 1              # the low-pass is causal; the high-pass is centred


def pulse_filter(q, fs):
    """Band-passed PPG (int64), aligned with the input up to `PulsePlan.delay`."""
    plan = PulsePlan(fs)
    b = _boxsum(_boxsum(q, plan.lp), plan.lp)
    return (plan.hp * b - _centred_sum(b, plan.half, True)) >> plan.shift


def pulse_detect(x, fs, step):
    """Systolic peak sample indices (int64, increasing) of the PPG `x` sampled at `fs` Hz."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    plan = PulsePlan(fs)
    bp = pulse_filter(quantize(x, step), fs)
    y = np.maximum(bp, 0)
    s = y * y
    w1, w2 = 2 * plan.peak + 1, 2 * plan.beat + 1
    offset = (int(s.sum()) // n) * w1 * w2 // 50
    peak_energy = _centred_sum(s, plan.peak, False) * w2
    inside = peak_energy > _centred_sum(s, plan.beat, False) * w1 + offset
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    peaks = []
    heights = []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        if b - a < w1:
            continue
        t = a + int(np.argmax(bp[a:b]))
        r = min(max(t - plan.delay, 0), n - 1)
        h = int(bp[t])
        if peaks and r - peaks[-1] < plan.refractory:
            if h > heights[-1]:
                peaks[-1], heights[-1] = r, h
            continue
        peaks.append(r)
        heights.append(h)
    return np.asarray(peaks, dtype=np.int64)


# ------------------------------------------------------------------------------- RR windows


def rr_features(rr, window, step):
    """Per window of `window` RR intervals (windows start every `step`): coefficient of
    variation, normalised RMSSD, turning-point ratio, normalised Shannon entropy of a 16-bin
    histogram. Shape (windows, 4), float64."""
    n = len(rr)
    count = 0 if n < window else (n - window) // step + 1
    out = np.empty((count, 4))
    if count == 0:
        return out
    w = np.lib.stride_tricks.sliding_window_view(rr, window)[::step]
    mean = w.sum(axis=1) / window
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 0] = np.sqrt(((w - mean[:, None]) ** 2).sum(axis=1) / window) / mean
        d = np.diff(w, axis=1)
        out[:, 1] = np.sqrt((d * d).sum(axis=1) / (window - 1)) / mean
    a, b, c = w[:, :-2], w[:, 1:-1], w[:, 2:]
    turns = ((b > a) & (b > c)) | ((b < a) & (b < c))
    out[:, 2] = turns.sum(axis=1) / (window - 2)
    lo, hi = w.min(axis=1), w.max(axis=1)
    for i in range(count):
        if hi[i] == lo[i]:
            out[i, 3] = 0.0
            continue
        bins = np.floor((w[i] - lo[i]) / (hi[i] - lo[i]) * 16.0).astype(np.int64)
        counts = np.bincount(np.minimum(bins, 15), minlength=16)
        h = 0.0
        for k in counts.tolist():
            if k:
                p = k / window
                h -= p * math.log(p)
        out[i, 3] = h / math.log(16.0)
    return out
