# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: extra_compile_args = -ffp-contract=off -fno-math-errno
"""Compiled kernels over timestamped series. Called only through telemon.dsp, which validates.

Every function and class here has a twin of the same name in series_reference.py (the
specification, with the semantics written out); the suite compares them. Results are equal
to the reference's bit for bit, except the rolling/SPC mean and SD, which are updated
incrementally here and agree to rounding. `-ffp-contract=off` keeps the C compiler from
fusing a*x + b*z into one FMA instruction (aarch64 does by default), which would round
differently from Python; `-fno-math-errno` lets it vectorise sqrt (errno is never read).

Rolling statistics use a two-stack sliding-window aggregate: each sample is merged into a
running (count, mean, M2, min, max) when it arrives and once more when the window's front is
rebuilt, and nothing is ever subtracted. So an evicted outlier (1e300) leaves no trace in
later windows and the cost is O(1) amortised per sample, whatever the window holds.
"""

from libc.math cimport NAN, sqrt, isfinite, isinf
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memmove

import numpy as np

cdef extern from *:
    """
    /* max(v, 0) without a branch (CUSUM's clamp is unpredictable on noisy data): MAXSD
       returns its second operand (0) for NaN and for -0, exactly like v > 0 ? v : 0. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline double telemon_pos(double v) {
        return _mm_cvtsd_f64(_mm_max_sd(_mm_set_sd(v), _mm_setzero_pd()));
    }
    #else
    static inline double telemon_pos(double v) { return v > 0.0 ? v : 0.0; }
    #endif
    """
    double pos "telemon_pos"(double v) noexcept nogil

cdef signed char NO_VALUE = -128
OK, TIME_NOT_FINITE, TIME_DECREASING, VALUE_INFINITE = 0, 1, 2, 3
cdef Py_ssize_t BLOCK = 4096  # samples per nogil stretch (buffers grow between stretches)


def limit_bands(const double[::1] values, double red_low, double yellow_low,
                double yellow_high, double red_high):
    cdef Py_ssize_t i, n = values.shape[0]
    out = np.empty(n, dtype=np.int8)
    cdef signed char[::1] band = out
    cdef double v
    with nogil:
        for i in range(n):
            v = values[i]
            # NaN fails every comparison, so unset limits (NaN) never trigger.
            if v != v:
                band[i] = NO_VALUE
            elif v < red_low:
                band[i] = -2
            elif v > red_high:
                band[i] = 2
            elif v < yellow_low:
                band[i] = -1
            elif v > yellow_high:
                band[i] = 1
            else:
                band[i] = 0
    return out


def check_series(const double[::1] times, const double[::1] values):
    cdef Py_ssize_t i = 0, n = times.shape[0]
    cdef int code = 0
    with nogil:
        for i in range(n):
            if not isfinite(times[i]):
                code = 1
            elif i > 0 and times[i] < times[i - 1]:
                code = 2
            elif isinf(values[i]):
                code = 3
            if code:
                break
    if code == 0:
        return 0, -1
    return code, i


cdef inline void _check_order(double first, double last_time) except *:
    if first < last_time:
        raise ValueError(f"time went backwards: {first} after {last_time}")


# --- growable buffers ---------------------------------------------------------------------

cdef struct Agg:
    double n
    double mean
    double m2
    double lo
    double hi


cdef struct Buf:
    # A FIFO of (t, x), plus per-slot aggregates for the two-stack window (unused by others).
    double *t
    double *x
    Agg *sfx
    Py_ssize_t head, mid, tail, cap


cdef int buf_init(Buf *b, bint with_sfx) except -1:
    b.head = b.mid = b.tail = 0
    b.cap = 64
    b.t = <double *> malloc(b.cap * sizeof(double))
    b.x = <double *> malloc(b.cap * sizeof(double))
    b.sfx = <Agg *> malloc(b.cap * sizeof(Agg)) if with_sfx else NULL
    if b.t == NULL or b.x == NULL or (with_sfx and b.sfx == NULL):
        raise MemoryError()
    return 0


cdef void buf_free(Buf *b) noexcept:
    free(b.t)
    free(b.x)
    free(b.sfx)
    b.t = b.x = NULL
    b.sfx = NULL


cdef int buf_reserve(Buf *b, Py_ssize_t m) except -1:
    """Room for m more pushes: slide live slots to the front when at least half of the used
    slots are dead (amortised O(1) per push), else grow."""
    cdef Py_ssize_t live, cap
    cdef void *p
    if b.cap - b.tail >= m:
        return 0
    live = b.tail - b.head
    if b.head > 0 and b.head >= live:
        memmove(b.t, b.t + b.head, live * sizeof(double))
        memmove(b.x, b.x + b.head, live * sizeof(double))
        if b.sfx != NULL:
            memmove(b.sfx, b.sfx + b.head, (b.mid - b.head) * sizeof(Agg))
            b.mid -= b.head
        b.tail = live
        b.head = 0
    if b.cap - b.tail >= m:
        return 0
    cap = max(2 * b.cap, b.tail + m)
    p = realloc(b.t, cap * sizeof(double))
    if p == NULL:
        raise MemoryError()
    b.t = <double *> p
    p = realloc(b.x, cap * sizeof(double))
    if p == NULL:
        raise MemoryError()
    b.x = <double *> p
    if b.sfx != NULL:
        p = realloc(b.sfx, cap * sizeof(Agg))
        if p == NULL:
            raise MemoryError()
        b.sfx = <Agg *> p
    b.cap = cap
    return 0


# --- threshold with hysteresis and a sustain time -------------------------------------------

cdef class ThresholdState:
    cdef double high, low, hysteresis, sustain, high_since, low_since, last_time
    cdef bint high_on, low_on

    def __init__(self, double high, double low, double hysteresis, double sustain):
        self.high, self.low, self.hysteresis, self.sustain = high, low, hysteresis, sustain
        self.high_on = self.low_on = False
        self.high_since = self.low_since = NAN  # NaN: no run under way
        self.last_time = -np.inf

    def update(self, const double[::1] times, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        out = np.empty(n, dtype=np.int8)
        cdef signed char[::1] state = out
        cdef double t, x, high = self.high, low = self.low, hyst = self.hysteresis
        cdef double sustain = self.sustain, high_since = self.high_since
        cdef double low_since = self.low_since
        cdef bint high_on = self.high_on, low_on = self.low_on
        cdef bint check_high = high == high, check_low = low == low
        if n == 0:
            return out
        _check_order(times[0], self.last_time)
        with nogil:
            for i in range(n):
                t = times[i]
                x = values[i]
                if x == x:
                    if check_high:
                        if high_on:
                            if x <= high - hyst:
                                high_on = False
                                high_since = NAN
                        elif x > high:
                            if high_since != high_since:
                                high_since = t
                            if t - high_since >= sustain:
                                high_on = True
                        else:
                            high_since = NAN
                    if check_low:
                        if low_on:
                            if x >= low + hyst:
                                low_on = False
                                low_since = NAN
                        elif x < low:
                            if low_since != low_since:
                                low_since = t
                            if t - low_since >= sustain:
                                low_on = True
                        else:
                            low_since = NAN
                state[i] = 1 if high_on else (-1 if low_on else 0)
        self.high_on, self.low_on = high_on, low_on
        self.high_since, self.low_since = high_since, low_since
        self.last_time = times[n - 1]
        return out


def threshold(const double[::1] times, const double[::1] values, double high, double low,
              double hysteresis, double sustain):
    return ThresholdState(high, low, hysteresis, sustain).update(times, values)


# --- rolling statistics: two-stack sliding-window aggregate --------------------------------

cdef Agg EMPTY = Agg(0.0, NAN, NAN, NAN, NAN)  # mean/min/max of nothing: NaN


cdef inline Agg agg_one(double x) noexcept nogil:
    return Agg(1.0, x, 0.0, x, x)


cdef inline Agg agg_merge(Agg a, Agg b) noexcept nogil:
    """Chan et al.'s pairwise update; `a` holds the older samples."""
    cdef Agg r
    cdef double d, f
    if a.n == 0.0:
        return b
    if b.n == 0.0:
        return a
    r.n = a.n + b.n
    d = b.mean - a.mean
    f = b.n / r.n
    r.mean = a.mean + d * f
    r.m2 = a.m2 + b.m2 + d * d * a.n * f
    r.lo = b.lo if b.lo < a.lo else a.lo
    r.hi = b.hi if b.hi > a.hi else a.hi
    return r


cdef class _Window:
    # The window's samples sit in Buf slots [head, tail). The front stack is [head, mid):
    # sfx[i] aggregates slots i..mid-1. The back stack is [mid, tail), aggregated in `back`.
    # Evicting the oldest slot is head += 1, after rebuilding the front from the back when
    # the front is empty.
    cdef Buf buf
    cdef Agg back
    cdef double width, last_time

    def __cinit__(self, *args):
        buf_init(&self.buf, True)
        self.back = EMPTY
        self.last_time = -np.inf

    def __dealloc__(self):
        buf_free(&self.buf)

    cdef int slide(self, const double[::1] times, const double[::1] values, bint exclude,
                   int64_t[::1] count, double[::1] mean, double[::1] m2, double[::1] lo,
                   double[::1] hi) except -1:
        """Per sample: evict what left the window, then write the aggregate of the window
        including the sample (exclude=False) or of the samples before it (exclude=True):
        count, mean, M2 (sum of squared deviations), min, max."""
        cdef Py_ssize_t i, j, start, stop, n = values.shape[0]
        cdef Py_ssize_t head, mid, tail
        cdef double *bt
        cdef double *bx
        cdef Agg *sfx
        cdef Agg back, acc, a
        cdef double x, cut, width = self.width
        if n == 0:
            return 0
        _check_order(times[0], self.last_time)
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            buf_reserve(&self.buf, stop - start)
            # The state lives in locals for the loop, so the compiler can keep it in
            # registers instead of reloading it after every store to an output column.
            head, mid, tail = self.buf.head, self.buf.mid, self.buf.tail
            bt, bx, sfx = self.buf.t, self.buf.x, self.buf.sfx
            back = self.back
            with nogil:
                for i in range(start, stop):
                    x = values[i]
                    cut = times[i] - width
                    # Mostly 0-2 samples leave per step, at random: evicting up to two
                    # without a branch saves a misprediction a sample.
                    if head + 2 <= mid:
                        head += bt[head] <= cut
                        head += bt[head] <= cut
                    while head < tail and bt[head] <= cut:
                        if head == mid:  # front empty: rebuild it from the back stack
                            acc = EMPTY
                            j = tail
                            while j > mid:
                                j -= 1
                                acc = agg_merge(agg_one(bx[j]), acc)
                                sfx[j] = acc
                            mid = tail
                            back = EMPTY
                        head += 1
                    if x == x and not exclude:
                        bt[tail] = times[i]
                        bx[tail] = x
                        tail += 1
                        back = agg_merge(back, agg_one(x))
                    a = agg_merge(sfx[head], back) if head < mid else back
                    if x == x and exclude:
                        bt[tail] = times[i]
                        bx[tail] = x
                        tail += 1
                        back = agg_merge(back, agg_one(x))
                    count[i] = <int64_t> a.n
                    mean[i] = a.mean
                    m2[i] = a.m2
                    lo[i] = a.lo
                    hi[i] = a.hi
            self.buf.head, self.buf.mid, self.buf.tail = head, mid, tail
            self.back = back
        self.last_time = times[n - 1]
        return 0


# slide() is the sequential pass (full of data-dependent branches); a second, branch-free
# pass turns M2 into the SD (the compiler vectorises it), keeping divide and sqrt off the
# first.

cdef class RollingState(_Window):
    def __init__(self, double window):
        self.width = window

    def update(self, const double[::1] times, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        count, mean, sd, lo, hi = (np.empty(n, dtype=np.int64), np.empty(n), np.empty(n),
                                   np.empty(n), np.empty(n))
        cdef int64_t[::1] c = count
        cdef double[::1] s = sd
        self.slide(times, values, False, c, mean, s, lo, hi)
        with nogil:
            for i in range(n):
                s[i] = sqrt(s[i] / <double> (c[i] - 1)) if c[i] > 1 else NAN
        return count, mean, sd, lo, hi


def rolling(const double[::1] times, const double[::1] values, double window):
    return RollingState(window).update(times, values)


cdef class SPCBandState(_Window):
    cdef double k
    cdef int64_t min_count

    def __init__(self, double window, double k, int64_t min_count):
        self.width, self.k, self.min_count = window, k, min_count

    def update(self, const double[::1] times, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        count, mean, sd, lower, upper = (np.empty(n, dtype=np.int64), np.empty(n),
                                         np.empty(n), np.empty(n), np.empty(n))
        cdef int64_t[::1] c = count
        cdef double[::1] m = mean, s = sd, lo = lower, hi = upper
        cdef double k = self.k, sdev
        cdef int64_t min_count = self.min_count
        self.slide(times, values, True, c, m, s, lo, hi)
        with nogil:
            for i in range(n):
                if c[i] >= min_count:
                    sdev = sqrt(s[i] / <double> (c[i] - 1))
                    s[i] = sdev
                    lo[i] = m[i] - k * sdev
                    hi[i] = m[i] + k * sdev
                else:
                    m[i] = s[i] = lo[i] = hi[i] = NAN
        return count, mean, sd, lower, upper


def spc_band(const double[::1] times, const double[::1] values, double window, double k,
             int64_t min_count):
    return SPCBandState(window, k, min_count).update(times, values)


# --- change over a time lag ------------------------------------------------------------------

cdef class ChangeState:
    cdef Buf pending  # non-NaN samples newer than t - lag
    cdef double lag, tolerance, ref_t, ref_x, last_time

    def __cinit__(self, *args):
        buf_init(&self.pending, False)
        self.ref_t = self.ref_x = NAN  # the latest non-NaN sample at or before t - lag
        self.last_time = -np.inf

    def __dealloc__(self):
        buf_free(&self.pending)

    def __init__(self, double lag, double tolerance):
        self.lag, self.tolerance = lag, tolerance

    def update(self, const double[::1] times, const double[::1] values):
        cdef Py_ssize_t i, start, stop, n = values.shape[0]
        delta, since = np.empty(n), np.empty(n)
        cdef double[::1] d = delta, s = since
        cdef double t, x, cut
        cdef Buf *p = &self.pending
        if n == 0:
            return delta, since
        _check_order(times[0], self.last_time)
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            buf_reserve(p, stop - start)
            with nogil:
                for i in range(start, stop):
                    t = times[i]
                    x = values[i]
                    cut = t - self.lag
                    while p.head < p.tail and p.t[p.head] <= cut:
                        self.ref_t = p.t[p.head]
                        self.ref_x = p.x[p.head]
                        p.head += 1
                    d[i] = s[i] = NAN
                    if x == x:
                        if self.ref_t >= cut - self.tolerance:  # False while ref_t is NaN
                            d[i] = x - self.ref_x
                            s[i] = self.ref_t
                        p.t[p.tail] = t
                        p.x[p.tail] = x
                        p.tail += 1
        self.last_time = times[n - 1]
        return delta, since


def change(const double[::1] times, const double[::1] values, double lag, double tolerance):
    return ChangeState(lag, tolerance).update(times, values)


# --- exponentially weighted averages ---------------------------------------------------------

cdef class EWMAState:
    cdef double alpha, beta, z

    def __init__(self, double alpha):
        self.alpha, self.beta, self.z = alpha, 1.0 - alpha, NAN

    def update(self, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        out = np.empty(n)
        cdef double[::1] o = out
        cdef double x, a = self.alpha, b = self.beta, z = self.z
        with nogil:
            for i in range(n):
                x = values[i]
                if x == x:
                    z = x if z != z else a * x + b * z
                o[i] = z
        self.z = z
        return out


def ewma(const double[::1] values, double alpha):
    return EWMAState(alpha).update(values)


cdef class MACDState:
    cdef double a1, b1, a2, b2, a3, b3, fast, slow, signal

    def __init__(self, double fast_alpha, double slow_alpha, double signal_alpha):
        self.a1, self.b1 = fast_alpha, 1.0 - fast_alpha
        self.a2, self.b2 = slow_alpha, 1.0 - slow_alpha
        self.a3, self.b3 = signal_alpha, 1.0 - signal_alpha
        self.fast = self.slow = self.signal = NAN

    def update(self, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        macd, signal, hist = np.empty(n), np.empty(n), np.empty(n)
        cdef double[::1] mo = macd, so = signal, ho = hist
        cdef double x, m, a1 = self.a1, b1 = self.b1, a2 = self.a2, b2 = self.b2
        cdef double a3 = self.a3, b3 = self.b3
        cdef double f = self.fast, s = self.slow, g = self.signal
        with nogil:
            for i in range(n):
                x = values[i]
                if x == x:
                    if f != f:
                        f = x
                        s = x
                    else:
                        f = a1 * x + b1 * f
                        s = a2 * x + b2 * s
                    m = f - s
                    g = m if g != g else a3 * m + b3 * g
                m = f - s
                mo[i] = m
                so[i] = g
                ho[i] = m - g
        self.fast, self.slow, self.signal = f, s, g
        return macd, signal, hist


def macd(const double[::1] values, double fast_alpha, double slow_alpha, double signal_alpha):
    return MACDState(fast_alpha, slow_alpha, signal_alpha).update(values)


# --- CUSUM -----------------------------------------------------------------------------------

cdef class CUSUMState:
    cdef double mu, sigma, k, h, upper, lower
    cdef bint use_upper, use_lower

    def __init__(self, double mu, double sigma, double k, double h, bint upper, bint lower):
        self.mu, self.sigma, self.k, self.h = mu, sigma, k, h
        self.use_upper, self.use_lower = upper, lower
        self.upper = self.lower = 0.0

    def update(self, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        upper, lower, alarm = np.empty(n), np.empty(n), np.empty(n, dtype=np.int8)
        cdef double[::1] uo = upper, lo = lower
        cdef signed char[::1] ao = alarm
        cdef double x, z, mu = self.mu, sigma = self.sigma, k = self.k, h = self.h
        cdef double up = self.upper, dn = self.lower
        cdef bint use_up = self.use_upper, use_dn = self.use_lower
        with nogil:
            for i in range(n):
                x = values[i]
                ao[i] = 0
                if x == x:
                    z = (x - mu) / sigma
                    if use_up:
                        up = pos(up + z - k)
                    if use_dn:
                        dn = pos(dn - z - k)
                uo[i] = up
                lo[i] = dn
                if up > h:
                    ao[i] = 1
                    up = 0.0
                if dn > h:
                    ao[i] = -1
                    dn = 0.0
        self.upper, self.lower = up, dn
        return upper, lower, alarm


def cusum(const double[::1] values, double mu, double sigma, double k, double h, bint upper,
          bint lower):
    return CUSUMState(mu, sigma, k, h, upper, lower).update(values)


# --- missed measurements against a schedule --------------------------------------------------

cdef class ScheduleState:
    cdef Buf times  # sample times that may still cover period k or later
    cdef double start, period, deadline, grace, last_time, last_now
    cdef int64_t k  # next period to decide

    def __cinit__(self, *args):
        buf_init(&self.times, False)
        self.k = 0
        self.last_time = self.last_now = -np.inf

    def __dealloc__(self):
        buf_free(&self.times)

    def __init__(self, double start, double period, double deadline, double grace):
        self.start, self.period, self.deadline, self.grace = start, period, deadline, grace

    def update(self, const double[::1] times):
        cdef Py_ssize_t i, n = times.shape[0]
        if n == 0:
            return
        _check_order(times[0], self.last_time)
        buf_reserve(&self.times, n)
        for i in range(n):
            self.times.t[self.times.tail + i] = times[i]
        self.times.tail += n
        self.last_time = times[n - 1]

    def missed(self, double now):
        cdef int64_t k, periods = 0
        cdef Py_ssize_t found = 0
        cdef double begin, due
        cdef Buf *b = &self.times
        if now < self.last_now:
            raise ValueError(f"now went backwards: {now} after {self.last_now}")
        self.last_now = now
        k = self.k
        while self.start + <double> k * self.period + self.deadline + self.grace < now:
            k += 1
            periods += 1
        out = np.empty(periods)
        cdef double[::1] o = out
        with nogil:
            for k in range(self.k, self.k + periods):
                begin = self.start + <double> k * self.period
                due = begin + self.deadline
                while b.head < b.tail and b.t[b.head] < begin:
                    b.head += 1
                if not (b.head < b.tail and b.t[b.head] <= due + self.grace):
                    o[found] = due
                    found += 1
        self.k += periods
        return out[:found].copy()


def missed_deadlines(const double[::1] times, double start, double period, double deadline,
                     double grace, double now):
    state = ScheduleState(start, period, deadline, grace)
    state.update(times)
    return state.missed(now)
