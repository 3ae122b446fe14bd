# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled waveform kernels: QRS detection, PPG pulse detection, RR-window features.

Called only through telemon.dsp, which validates (1-D contiguous float64, fs > 0, step > 0).
Every function has a twin of the same name in waveform_reference.py, which is the
specification (algorithms, sources, and why the two agree sample for sample: integer
arithmetic after one quantisation); the suite compares them.

QRS detection streams the samples once (block sums for the decimation), then runs the
integer stages over arrays padded with the steady state before the record (no index
clamping in the loops), marks local maxima on the fly, keeps the dominant ones and applies
the decision rules to those candidates only.
"""

import numpy as np

from libc.math cimport floor, log, sqrt
from libc.stdint cimport int64_t

cdef enum:
    LIMIT = 32768


cdef inline Py_ssize_t span(double fs, double ms) noexcept nogil:
    cdef Py_ssize_t n = <Py_ssize_t>(fs * ms / 1000.0 + 0.5)
    return n if n > 1 else 1


cdef inline int bit_length(int64_t v) noexcept nogil:
    cdef int bits = 0
    while v > 0:
        bits += 1
        v >>= 1
    return bits


cdef inline Py_ssize_t ring_size(Py_ssize_t longest) noexcept nogil:
    cdef Py_ssize_t size = 1
    while size <= longest:
        size <<= 1
    return size


cdef inline int64_t clip_floor(double v, double lim) noexcept nogil:
    """np.floor(np.clip(v, -lim, lim)) for v not NaN, branch-free: clip (minsd, maxsd),
    truncate, and step down where truncation rounded a negative fraction up."""
    cdef int64_t t
    v = v if v < lim else lim
    v = v if v > -lim else -lim
    t = <int64_t>v
    return t - (t > v)


cdef double first_valid(const double[::1] x) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        if x[i] == x[i]:
            return x[i]
    return 0.0


cdef int64_t first_quantum(const double[::1] x, double inv) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v
    for i in range(x.shape[0]):
        v = x[i] * inv
        if v == v:
            return clip_floor(v, LIMIT)
    return 0


def quantize(const double[::1] x, double step):
    cdef Py_ssize_t i, n = x.shape[0]
    out = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] q = out
    cdef double inv = 1.0 / step, v
    cdef int64_t held
    with nogil:
        held = first_quantum(x, inv)
        for i in range(n):
            v = x[i] * inv
            if v == v:
                held = clip_floor(v, LIMIT)
            q[i] = held
    return out


# --------------------------------------------------------------------------------------- QRS

cdef struct QrsPlan:
    Py_ssize_t decim, lp, hp, deriv, window, radius, twave, learn, second, delay, refine
    Py_ssize_t flush
    int shift


cdef QrsPlan qrs_plan(double fs) noexcept nogil:
    cdef QrsPlan p
    cdef double f
    p.decim = <Py_ssize_t>(fs / 120.0)
    if p.decim < 1:
        p.decim = 1
    f = fs / p.decim
    p.lp = span(f, 30.0)
    p.hp = 2 * span(f, 80.0) + 1
    p.shift = bit_length(p.lp * p.lp * p.hp * p.decim) - 1
    p.deriv = span(f, 20.0)
    p.window = span(f, 150.0)
    p.radius = span(f, 200.0)
    p.twave = span(f, 360.0)
    p.learn = span(f, 2000.0)
    p.second = span(f, 1000.0)
    p.delay = (2 * (p.lp - 1) + (p.hp - 1)) // 2
    p.refine = span(fs, 20.0)
    p.flush = p.delay + p.window + p.deriv + p.radius
    return p


cdef inline int64_t block_sum(const double[::1] x, Py_ssize_t start, Py_ssize_t d,
                              double inv, double* held) noexcept nogil:
    """floor(sum of x[start .. start+d-1] * inv), clipped to +-d*LIMIT (NaN product: 0).
    NaN holds the last valid sample (`held`, carried across blocks); a partial last block
    is completed with its last sample. Summed left to right, as the reference does."""
    cdef Py_ssize_t j, n = x.shape[0], stop = start + d
    cdef double total = 0.0, h = held[0], v, lim = <double>d * LIMIT
    if stop > n:
        stop = n
    for j in range(start, stop):
        v = x[j]
        h = v if v == v else h
        total += h
    for j in range(stop, start + d):
        total += h
    held[0] = h
    v = total * inv
    return 0 if v != v else clip_floor(v, lim)


cdef Py_ssize_t qrs_stages(const double[::1] x, double step, QrsPlan plan, Py_ssize_t pad,
                           int64_t* u, int64_t* a, int64_t* b, int64_t* bp, int64_t* mwi,
                           Py_ssize_t blocks, Py_ssize_t m, int64_t* peaks) noexcept nogil:
    """Block sums, two boxcars, high-pass, derivative, square, integration; and the local
    maxima of the integral (v[p] > v[p-1], v[p] >= v[p+1], p >= 1), returned in `peaks`
    (their count is returned). u, a, b and bp hold `pad` samples of the steady state before
    the record (the first block's; for bp 0), so no index needs clamping; after the record's
    `blocks` block sums, u repeats the last one up to m."""
    cdef Py_ssize_t i, D = plan.decim, L = plan.lp, M = plan.hp
    cdef Py_ssize_t half = (plan.hp - 1) // 2, k = plan.deriv, W = plan.window, count = 0
    cdef int shift = plan.shift
    cdef double inv = 1.0 / step, h = first_valid(x)
    cdef int64_t acc_a, acc_b, acc_c, f, d, e, s = 0, prev = 0
    cdef bint rising = False
    # Block sums (NaN holds the last valid sample; a partial last block is completed with
    # its last sample; summed left to right, as the reference does).
    for i in range(blocks):
        u[pad + i] = block_sum(x, i * D, D, inv, &h)
    for i in range(blocks, m):   # flushed with the last value
        u[pad + i] = u[pad + blocks - 1]
    for i in range(pad):
        u[i] = u[pad]
        a[i] = L * u[pad]
        b[i] = L * L * u[pad]
        bp[i] = 0
    acc_a = L * u[pad]
    acc_b = L * L * u[pad]
    for i in range(pad, pad + m):
        acc_a += u[i] - u[i - L]
        a[i] = acc_a
        acc_b += acc_a - a[i - L]
        b[i] = acc_b
    acc_c = M * L * L * u[pad]
    for i in range(pad, pad + m):
        acc_c += b[i] - b[i - M]
        f = (M * b[i - half] - acc_c) >> shift
        bp[i] = f
        d = f - bp[i - k]
        e = bp[i - W] - bp[i - W - k]
        s += d * d - e * e
        mwi[i - pad] = s
        # A local maximum at the previous sample (the first sample never is one).
        peaks[count] = i - pad - 1
        count += (<int>rising) & (<int>(s <= prev)) & (<int>(i > pad + 1))
        rising = s > prev
        prev = s
    if m > 1 and rising:
        peaks[count] = m - 1
        count += 1
    return count


cdef Py_ssize_t dominant_peaks(const int64_t* v, Py_ssize_t m, Py_ssize_t radius,
                               int64_t* maxima, Py_ssize_t nmax) noexcept nogil:
    """Of the local maxima, those with v[p] > 0, above every v in [p-radius, p) and at
    least every v in (p, p+radius] (indices inside 0..m-1): at most one per radius, the
    first on ties. Compacts them to the front of `maxima` and returns their count."""
    cdef Py_ssize_t p, j, i, lo, hi, count = 0
    cdef int64_t h
    for i in range(nmax):
        p = maxima[i]
        h = v[p]
        if h <= 0:
            continue
        lo = p - radius if p - radius > 0 else 0
        hi = p + radius if p + radius < m - 1 else m - 1
        j = p - 2
        while j >= lo and v[j] < h:
            j -= 1
        if j >= lo:
            continue
        j = p + 2
        while j <= hi and v[j] <= h:
            j += 1
        if j <= hi:
            continue
        maxima[count] = p
        count += 1
    return count


cdef inline int64_t slope(const int64_t* bp, Py_ssize_t p, QrsPlan plan) noexcept nogil:
    """Largest |bp[j] - bp[j-k]| in the integration window ending at p (bp: the padded
    array from its first real sample, so bp[-1..-pad] are the steady-state 0)."""
    cdef Py_ssize_t j, lo = p - plan.window + 1
    cdef int64_t d, best = 0
    if lo < 0:
        lo = 0
    for j in range(lo, p + 1):
        d = bp[j] - bp[j - plan.deriv]
        if d < 0:
            d = -d
        if d > best:
            best = d
    return best


cdef inline int64_t r_peak(const double[::1] x, const int64_t* bp, Py_ssize_t p,
                           QrsPlan plan, Py_ssize_t m) noexcept nogil:
    """The largest |bp| under the window ending at p, moved back by the band-pass delay to
    the input rate, then refined to the raw extreme of the same sign within +-refine."""
    cdef Py_ssize_t j, at, pick, lo = p - plan.window - plan.deriv + 1, hi, n = x.shape[0]
    cdef int64_t a, best = -1
    cdef double sign, top = 0.0, val
    cdef bint found = False
    if lo < 0:
        lo = 0
    at = lo
    for j in range(lo, p + 1):
        a = bp[j] if bp[j] >= 0 else -bp[j]
        if a > best:
            best = a
            at = j
    sign = 1.0 if bp[at] >= 0 else -1.0
    at -= plan.delay
    if at < 0:
        at = 0
    if at > m - 1:
        at = m - 1
    at = at * plan.decim + (plan.decim - 1) // 2
    if at > n - 1:
        at = n - 1
    lo = at - plan.refine if at - plan.refine > 0 else 0
    hi = at + plan.refine if at + plan.refine < n - 1 else n - 1
    pick = at
    for j in range(lo, hi + 1):
        val = sign * x[j]
        if val == val and (not found or val > top):
            top = val
            found = True
            pick = j
    return pick


cdef inline int64_t min64(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef Py_ssize_t qrs_decide(const double[::1] x, const int64_t* bp, const int64_t* mwi,
                           Py_ssize_t m, const int64_t* cand, Py_ssize_t ncand,
                           QrsPlan plan, int64_t* out) noexcept nogil:
    """Pan & Tompkins' decision rules over the candidates (see waveform_reference)."""
    cdef Py_ssize_t i, j, p, now, since, nout = 0, learn = plan.learn if plan.learn < m else m
    cdef Py_ssize_t last = -1, best = -1
    cdef int64_t spk = 0, npk = 0, total = 0, v, best_v = 0, thr1, limit, last_slope = 0
    cdef int64_t rr[8]
    cdef int64_t rr_sum = 0
    cdef Py_ssize_t rr_count = 0, rr_next = 0
    cdef bint twave
    for j in range(learn):
        if mwi[j] > spk:
            spk = mwi[j]
        total += mwi[j]
    spk = spk // 3
    npk = total // learn // 2
    for i in range(ncand + 1):
        now = m if i == ncand else cand[i]
        since = last if last >= 0 else 0
        limit = (rr_sum // rr_count if rr_count else plan.second) * 166 // 100
        thr1 = npk + ((spk - npk) >> 2)
        if best >= 0 and now - since > limit and best_v > (thr1 >> 1):
            spk += (min64(best_v, 2 * spk) - spk) >> 2
            if last >= 0:
                rr_sum -= rr[rr_next] if rr_count == 8 else 0
                rr[rr_next] = best - last
                rr_sum += rr[rr_next]
                rr_next = (rr_next + 1) & 7
                rr_count = rr_count + 1 if rr_count < 8 else 8
            last = best
            last_slope = slope(bp, best, plan)
            best = -1
            out[nout] = r_peak(x, bp, last, plan, m)
            nout += 1
            since = last
            thr1 = npk + ((spk - npk) >> 2)
        if i == ncand:
            break
        p = now
        v = mwi[p]
        twave = last >= 0 and p - last < plan.twave and 2 * slope(bp, p, plan) < last_slope
        if v > thr1 and not twave:
            spk += ((v if spk <= 0 else min64(v, 2 * spk)) - spk) >> 3
            if last >= 0:
                rr_sum -= rr[rr_next] if rr_count == 8 else 0
                rr[rr_next] = p - last
                rr_sum += rr[rr_next]
                rr_next = (rr_next + 1) & 7
                rr_count = rr_count + 1 if rr_count < 8 else 8
            last = p
            last_slope = slope(bp, p, plan)
            best = -1
            out[nout] = r_peak(x, bp, p, plan, m)
            nout += 1
        else:
            npk += (min64(v, spk) - npk) >> 3
            if p - since > limit:
                npk >>= 1
                spk = npk + ((spk - npk) >> 1)
            if not twave and (best < 0 or v > best_v):
                best = p
                best_v = v
    # Keep the R peaks strictly increasing (clamping at the record's start can repeat 0).
    j = 0
    for i in range(nout):
        if j == 0 or out[i] > out[j - 1]:
            out[j] = out[i]
            j += 1
    return j


def _qrs_run(const double[::1] x, double fs, double step, bint flush):
    """(R peaks, candidates, band-passed signal, integrated signal); the last three at the
    decimated rate, flushed (see QrsPlan in the reference) when `flush`."""
    cdef QrsPlan plan = qrs_plan(fs)
    cdef Py_ssize_t n = x.shape[0], blocks = (n + plan.decim - 1) // plan.decim, ncand
    cdef Py_ssize_t m = blocks + (plan.flush if flush else 0), npeaks, nmax
    cdef Py_ssize_t pad = plan.hp + plan.window + plan.deriv + plan.lp + 1
    u_arr = np.empty(pad + m, dtype=np.int64)
    a_arr = np.empty(pad + m, dtype=np.int64)
    b_arr = np.empty(pad + m, dtype=np.int64)
    bp_arr = np.empty(pad + m, dtype=np.int64)
    mwi_arr = np.empty(m, dtype=np.int64)
    cand_arr = np.empty(m // 2 + 2, dtype=np.int64)
    out_arr = np.empty(m // (plan.radius + 1) + 3, dtype=np.int64)
    cdef int64_t[::1] u = u_arr, a = a_arr, b = b_arr, bp = bp_arr, mwi = mwi_arr
    cdef int64_t[::1] cand = cand_arr, out = out_arr
    with nogil:
        nmax = qrs_stages(x, step, plan, pad, &u[0], &a[0], &b[0], &bp[0], &mwi[0], blocks,
                          m, &cand[0])
        ncand = dominant_peaks(&mwi[0], m, plan.radius, &cand[0], nmax)
        npeaks = qrs_decide(x, &bp[pad], &mwi[0], m, &cand[0], ncand, plan, &out[0])
    return out_arr[:npeaks].copy(), cand_arr[:ncand].copy(), bp_arr[pad:], mwi_arr


def qrs_detect(const double[::1] x, double fs, double step):
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _qrs_run(x, fs, step, True)[0]


def qrs_filter(const int64_t[::1] q, double fs):
    """Band-passed signal and integrated squared derivative (decimated rate) of integer
    samples (|q| <= LIMIT), for the suite's stage-by-stage check; run with step 1, where
    the block sums are exact."""
    if q.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, _, bp, mwi = _qrs_run(np.asarray(q, dtype=np.float64), fs, 1.0, False)
    return bp, mwi


def qrs_candidates(const double[::1] x, double fs, double step):
    """Decimated-rate indices of the dominant peaks of the integrated signal."""
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _qrs_run(x, fs, step, True)[1]


# --------------------------------------------------------------------------------------- PPG

cdef struct PulsePlan:
    Py_ssize_t lp, half, hp, peak, beat, refractory, delay
    int shift


cdef PulsePlan pulse_plan(double fs) noexcept nogil:
    cdef PulsePlan p
    p.lp = span(fs, 50.0)
    p.half = span(fs, 800.0)
    p.hp = 2 * p.half + 1
    p.shift = bit_length(p.lp * p.lp * p.hp) - 1
    p.peak = span(fs, 55.0)
    p.beat = span(fs, 333.0)
    p.refractory = span(fs, 300.0)
    p.delay = p.lp - 1
    return p


cdef void pulse_stages(const double[::1] x, double step, PulsePlan plan, int64_t[::1] b,
                       int64_t[::1] cum, int64_t[::1] bp, int64_t[::1] rq,
                       int64_t[::1] ra) noexcept nogil:
    cdef Py_ssize_t i, lo, hi, n = x.shape[0], mask = rq.shape[0] - 1, L = plan.lp
    cdef Py_ssize_t h = plan.half
    cdef double inv = 1.0 / step, v
    cdef int64_t q = first_quantum(x, inv), a, bb, total
    for i in range(rq.shape[0]):
        rq[i] = q
        ra[i] = L * q
    a = L * q
    bb = L * L * q
    cum[0] = 0
    for i in range(n):
        v = x[i] * inv
        if v == v:
            q = clip_floor(v, LIMIT)
        a += q - rq[(i - L) & mask]
        rq[i & mask] = q
        bb += a - ra[(i - L) & mask]
        ra[i & mask] = a
        b[i] = bb
        cum[i + 1] = cum[i] + bb
    for i in range(n):
        lo = i - h
        hi = i + h
        total = 0
        if lo < 0:
            total += -lo * b[0]
            lo = 0
        if hi > n - 1:
            total += (hi - n + 1) * b[n - 1]
            hi = n - 1
        total += cum[hi + 1] - cum[lo]
        bp[i] = (plan.hp * b[i] - total) >> plan.shift


cdef inline int64_t centred(const int64_t[::1] cum, Py_ssize_t i, Py_ssize_t h,
                            Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t lo = i - h if i - h > 0 else 0
    cdef Py_ssize_t hi = i + h if i + h < n - 1 else n - 1
    return cum[hi + 1] - cum[lo]


cdef Py_ssize_t pulse_blocks(const int64_t[::1] bp, int64_t[::1] cum, PulsePlan plan,
                             int64_t[::1] out) noexcept nogil:
    cdef Py_ssize_t i, t, start = -1, count = 0, n = bp.shape[0], r
    cdef Py_ssize_t w1 = 2 * plan.peak + 1, w2 = 2 * plan.beat + 1
    cdef int64_t y, offset, h, last_h = 0
    cdef bint inside
    cum[0] = 0
    for i in range(n):
        y = bp[i] if bp[i] > 0 else 0
        cum[i + 1] = cum[i] + y * y
    offset = (cum[n] // n) * w1 * w2 // 50
    for i in range(n + 1):
        inside = i < n and (centred(cum, i, plan.peak, n) * w2
                            > centred(cum, i, plan.beat, n) * w1 + offset)
        if inside:
            if start < 0:
                start = i
            continue
        if start < 0:
            continue
        if i - start >= w1:
            t = start
            for r in range(start, i):
                if bp[r] > bp[t]:
                    t = r
            h = bp[t]
            r = t - plan.delay
            r = 0 if r < 0 else (n - 1 if r > n - 1 else r)
            if count and r - out[count - 1] < plan.refractory:
                if h > last_h:
                    out[count - 1] = r
                    last_h = h
            else:
                out[count] = r
                last_h = h
                count += 1
        start = -1
    return count


def pulse_detect(const double[::1] x, double fs, double step):
    cdef Py_ssize_t n = x.shape[0], count
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cdef PulsePlan plan = pulse_plan(fs)
    out_arr = np.empty(n // (2 * plan.peak + 1) + 1, dtype=np.int64)
    cdef int64_t[::1] b = np.empty(n, dtype=np.int64), bp = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] cum = np.empty(n + 1, dtype=np.int64), out = out_arr
    cdef int64_t[::1] rq = np.empty(ring_size(plan.lp), dtype=np.int64)
    cdef int64_t[::1] ra = np.empty(ring_size(plan.lp), dtype=np.int64)
    with nogil:
        pulse_stages(x, step, plan, b, cum, bp, rq, ra)
        count = pulse_blocks(bp, cum, plan, out)
    return out_arr[:count].copy()


# ------------------------------------------------------------------------------- RR windows

def rr_features(const double[::1] rr, Py_ssize_t window, Py_ssize_t step):
    cdef Py_ssize_t n = rr.shape[0], count, w, i, j, b
    count = 0 if n < window else (n - window) // step + 1
    out_arr = np.empty((count, 4), dtype=np.float64)
    cdef double[:, ::1] out = out_arr
    cdef double mean, acc, d, lo, hi, p, h
    cdef Py_ssize_t turns
    cdef Py_ssize_t bins[16]
    with nogil:
        for w in range(count):
            i = w * step
            acc = 0.0
            lo = rr[i]
            hi = rr[i]
            for j in range(i, i + window):
                acc += rr[j]
                if rr[j] < lo:
                    lo = rr[j]
                if rr[j] > hi:
                    hi = rr[j]
            mean = acc / window
            acc = 0.0
            for j in range(i, i + window):
                d = rr[j] - mean
                acc += d * d
            out[w, 0] = sqrt(acc / window) / mean
            acc = 0.0
            for j in range(i + 1, i + window):
                d = rr[j] - rr[j - 1]
                acc += d * d
            out[w, 1] = sqrt(acc / (window - 1)) / mean
            turns = 0
            for j in range(i + 1, i + window - 1):
                if ((rr[j] > rr[j - 1] and rr[j] > rr[j + 1])
                        or (rr[j] < rr[j - 1] and rr[j] < rr[j + 1])):
                    turns += 1
            out[w, 2] = turns / <double>(window - 2)
            if hi == lo:
                out[w, 3] = 0.0
                continue
            for b in range(16):
                bins[b] = 0
            for j in range(i, i + window):
                b = <Py_ssize_t>floor((rr[j] - lo) / (hi - lo) * 16.0)
                bins[b if b < 15 else 15] += 1
            h = 0.0
            for b in range(16):
                if bins[b]:
                    p = bins[b] / <double>window
                    h -= p * log(p)
            out[w, 3] = h / log(16.0)
    return out_arr

