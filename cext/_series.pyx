# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: extra_compile_args = -ffp-contract=off -fno-math-errno
"""Compiled kernels over timestamped series. Called only through telemon.dsp, which validates.

Every function and class here has a twin of the same name in series_reference.py (the
specification, with the semantics written out); the suite compares them. Results are equal
to the reference's bit for bit, except the rolling/SPC mean and SD (computed from running
sums here) and the EWMA (computed in segments, below), which agree to rounding.
`-ffp-contract=off` keeps the C compiler from fusing a*x + b*z into one FMA instruction
(aarch64 does by default), which would round differently from Python; `-fno-math-errno`
lets it inline sqrt (errno is never read).

Rolling statistics use a two-stack sliding-window aggregate. The front stack holds, per
slot, the aggregate of that slot and every newer one of the stack (built when the front is
rebuilt from the back, newest first); the back stack one running aggregate; a window is
one front slot merged with the back. Evicting is moving the front's first slot forward:
nothing is ever subtracted, so an evicted outlier (1e300) leaves no trace in later windows,
and the cost is O(1) amortised per sample, whatever the window holds. The aggregate is
(sum of d, sum of d², min, max) with d = x - shift, so merging is adding: `shift` is the
newest sample of the front when it is rebuilt (or the first sample of an empty window), a
sample of the window for as long as it is used, since the front is rebuilt as soon as it
empties. Then mean = shift + S/n and M2 = Q - S·S/n lose at most a factor n of precision
to cancellation (the shift is within sqrt(n-1) SDs of the mean), and equal values give an
SD of exactly 0. Q overflows (inf, as the reference's SD) only for values ~1e154 apart.
"""

from libc.math cimport INFINITY, NAN, sqrt, isfinite, isinf
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memmove, strcmp
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_SIMPLE, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)

import numpy as np

cdef extern from *:
    """
    /* max(v, 0) without a branch (CUSUM's clamp is unpredictable on noisy data): MAXSD
       returns its second operand (0) for NaN and for -0, exactly like v > 0 ? v : 0. As
       one instruction: the intrinsics add a move that zeroes the upper lane, on CUSUM's
       dependency chain (5.1 -> 4.4 ns a sample, measured in C). */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #if defined(__GNUC__)
    static inline double telemon_pos(double v) {
        __asm__("maxsd %1, %0" : "+x"(v) : "x"(0.0));
        return v;
    }
    #else
    static inline double telemon_pos(double v) {
        return _mm_cvtsd_f64(_mm_max_sd(_mm_set_sd(v), _mm_setzero_pd()));
    }
    #endif
    #else
    static inline double telemon_pos(double v) { return v > 0.0 ? v : 0.0; }
    #endif
    """
    double pos "telemon_pos"(double v) noexcept nogil

cdef signed char NO_VALUE = -128
OK, TIME_NOT_FINITE, TIME_DECREASING, VALUE_INFINITE = 0, 1, 2, 3
# Samples per nogil stretch (buffers grow between stretches). One stretch takes the alarm
# engine's series (MAX_SERIES = 5,000) whole: its window buffers are allocated once a call.
cdef Py_ssize_t BLOCK = 8192


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


cdef extern from *:
    """
    /* Whether any of samples [i, stop) (i >= 1, sample i - 1 without a problem) has a
       problem check_series reports. No early exit, so it runs at memory speed: most
       series have none, and the exact scan then only runs over the block with one. Times
       that do not decrease from a finite one are all finite if the last one is (a NaN
       fails >=), and a NaN value leaves the running maximum of |value| as it is (MAXPD
       returns its second operand then). */
    static int telemon_block_has_problem(const double *t, const double *x, Py_ssize_t i,
                                         Py_ssize_t stop) {
        int bad = !(t[stop - 1] - t[stop - 1] == 0.0);
    #if defined(__SSE2__)
        const __m128d sign = _mm_set1_pd(-0.0);
        __m128d order0 = _mm_castsi128_pd(_mm_set1_epi64x(-1)), order1 = order0;
        __m128d size0 = _mm_setzero_pd(), size1 = size0;
        for (; i + 4 <= stop; i += 4) {  /* two chains of each, four samples a step */
            __m128d t0 = _mm_loadu_pd(t + i), t1 = _mm_loadu_pd(t + i + 2);
            order0 = _mm_and_pd(order0, _mm_cmpge_pd(t0, _mm_loadu_pd(t + i - 1)));
            order1 = _mm_and_pd(order1, _mm_cmpge_pd(t1, _mm_loadu_pd(t + i + 1)));
            size0 = _mm_max_pd(_mm_andnot_pd(sign, _mm_loadu_pd(x + i)), size0);
            size1 = _mm_max_pd(_mm_andnot_pd(sign, _mm_loadu_pd(x + i + 2)), size1);
        }
        bad |= _mm_movemask_pd(_mm_and_pd(order0, order1)) != 3;
        bad |= _mm_movemask_pd(_mm_cmpeq_pd(_mm_max_pd(size0, size1),
                                            _mm_set1_pd(__builtin_inf()))) != 0;
    #endif
        for (; i < stop; i++)
            bad |= !(t[i] >= t[i - 1]) | (x[i] == __builtin_inf())
                   | (x[i] == -__builtin_inf());
        return bad;
    }
    """
    bint block_has_problem "telemon_block_has_problem"(const double *t, const double *x,
                                                       Py_ssize_t i, Py_ssize_t stop) noexcept nogil


def check_series(const double[::1] times, const double[::1] values):
    cdef Py_ssize_t start = 0, stop, i = 0, n = times.shape[0]
    cdef int code = 0
    with nogil:
        while start < n and code == 0:
            stop = min(start + 1024, n)
            if (start == 0 and not (isfinite(times[0]) and not isinf(values[0]))
                    or block_has_problem(&times[0], &values[0], max(start, 1), stop)):
                for i in range(start, stop):
                    if not isfinite(times[i]):
                        code = 1
                    elif i > 0 and times[i] < times[i - 1]:
                        code = 2
                    elif isinf(values[i]):
                        code = 3
                    if code:
                        break
            start = stop
    if code == 0:
        return 0, -1
    return code, i


cdef tuple _columns(Py_ssize_t n, int floats, bint int64_first=False,
                    bint int8_last=False):
    """Output columns of n samples carved from one allocation: `floats` float64 columns
    (the first one int64 with int64_first), then an int8 column with int8_last. A large
    block is mapped once and then recycled whole by the allocator, where several separate
    arrays are trimmed and page-faulted afresh on every call (over half the time of a
    year-long rolling call went into page faults)."""
    cdef Py_ssize_t bytes_ = (n + 7) // 8 if int8_last else 0
    block = np.empty(floats * n + bytes_)
    cols = [block[k * n:(k + 1) * n] for k in range(floats)]
    if int64_first:
        cols[0] = cols[0].view(np.int64)
    if int8_last:
        cols.append(block[floats * n:].view(np.int8)[:n])
    return tuple(cols)


cdef inline void _check_order(double first, double last_time) except *:
    if first < last_time:
        raise ValueError(f"time went backwards: {first} after {last_time}")


# --- growable buffers ---------------------------------------------------------------------

cdef struct Sfx:
    # Shifted sums, min and max of the front stack's slots i..mid-1 (rolling statistics).
    double s
    double q
    double lo
    double hi


cdef double INF = INFINITY
cdef Sfx NO_SFX = Sfx(0.0, 0.0, INF, -INF)  # the empty aggregate: count 0, no min, no max


cdef struct Buf:
    # A FIFO of (t, x), plus per-slot aggregates for the two-stack window (unused by others).
    double *t
    double *x
    Sfx *sfx  # one slot more than t and x: sfx[mid] is always the empty aggregate
    Py_ssize_t head, mid, tail, cap


cdef int buf_init(Buf *b, bint with_sfx) except -1:
    b.head = b.mid = b.tail = 0
    b.cap = 64
    b.t = <double *> malloc(b.cap * sizeof(double))
    b.x = <double *> malloc(b.cap * sizeof(double))
    b.sfx = <Sfx *> malloc((b.cap + 1) * sizeof(Sfx)) if with_sfx else NULL
    if b.t == NULL or b.x == NULL or (with_sfx and b.sfx == NULL):
        raise MemoryError()
    if with_sfx:
        b.sfx[0] = NO_SFX
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
            memmove(b.sfx, b.sfx + b.head, (b.mid + 1 - b.head) * sizeof(Sfx))
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
        p = realloc(b.sfx, (cap + 1) * sizeof(Sfx))
        if p == NULL:
            raise MemoryError()
        b.sfx = <Sfx *> p
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

cdef double *_INV = NULL  # _INV[j] = 1/j for 0 < j < _INV_LEN, NaN at j = 0 and j = -1
cdef Py_ssize_t _INV_LEN = 0
_INV_TABLES = []  # every table ever made, kept: a loop without the GIL may still read one


cdef int _inverses(Py_ssize_t most) except -1:
    """1/j for every count j up to `most`, shared by all windows: the loop multiplies,
    without a division, and a call does not pay for its own table. A bigger table replaces
    the pointer but the old one stays allocated (a loop in another thread may hold it); all
    of them together take less than twice the largest."""
    global _INV, _INV_LEN
    cdef Py_ssize_t j, length
    cdef double[::1] table
    if most < _INV_LEN:
        return 0
    length = max(most + 1, 2 * _INV_LEN, 1 << 14)
    array = np.empty(length + 1)
    table = array
    table[0] = table[1] = NAN
    for j in range(1, length):
        table[j + 1] = 1.0 / <double> j
    _INV_TABLES.append(array)
    _INV = &table[1]
    _INV_LEN = length
    return 0


cdef struct Run:
    # A window's state while a stretch of samples runs through it (see _Window).
    double *t
    double *x
    Sfx *sfx
    const double *inv
    Py_ssize_t head, mid, tail
    double shift, sb, qb, lob, hib, width, k
    int64_t min_count


cdef inline void _stretch(Run *w, const double *times, const double *values, Py_ssize_t start,
                          Py_ssize_t stop, int64_t *co, double *mo, double *so, double *lo,
                          double *hi, bint spc) noexcept nogil:
    """Samples start..stop-1 through the window: evict what left it, then the statistics of
    the window including the sample (rolling) or of the samples before it (spc): count, mean,
    SD and min, max (rolling) or mean -/+ k SD (spc). Called with spc a constant, so the
    compiler makes one loop for each, without the other's tests. The state lives in locals
    for the loop, so the compiler keeps it in registers instead of reloading it after every
    store to an output column."""
    cdef Py_ssize_t i, j, cnt
    cdef Py_ssize_t head = w.head, mid = w.mid, tail = w.tail
    cdef double *bt = w.t
    cdef double *bx = w.x
    cdef Sfx *sfx = w.sfx
    cdef const double *inv = w.inv
    cdef Sfx f
    cdef double t, ct, x, d, mr, s, q, v, m, rm, rv, sdev, lo_, hi_
    cdef double c = w.shift, sb = w.sb, qb = w.qb, lob = w.lob, hib = w.hib
    cdef double width = w.width, k = w.k
    cdef int64_t min_count = w.min_count
    for i in range(start, stop):
        t = times[i]
        x = values[i]
        ct = t - width
        # Mostly 0-2 samples leave per step, at random: evicting up to four without a
        # branch saves the misprediction of all but ~2 % of the steps. The loads depend on
        # `head` only (times are sorted: if one left, so did those before it), keeping
        # the chain from one sample's head to the next short. Times are compared as
        # doubles (-0 equals +0, as in the reference): the loop is bound by instruction
        # throughput, and an integer key cost more instructions than it saved latency.
        if head + 4 <= mid:
            head += ((bt[head] <= ct) + (bt[head + 1] <= ct)
                     + ((bt[head + 2] <= ct) + (bt[head + 3] <= ct)))
        while head < mid and bt[head] <= ct:
            head += 1
        if head == mid and mid < tail:
            # The front is empty: drop the back's samples that left, then rebuild the
            # front from the rest, shifted by its newest value.
            while head < tail and bt[head] <= ct:
                head += 1
            if head < tail:
                c = bx[tail - 1]
                s = q = 0.0
                lo_, hi_ = INF, -INF
                j = tail
                while j > head:
                    j -= 1
                    v = bx[j]
                    d = v - c
                    s = s + d
                    q = q + d * d
                    lo_ = v if v < lo_ else lo_
                    hi_ = v if v > hi_ else hi_
                    sfx[j] = Sfx(s, q, lo_, hi_)
            mid = tail
            sfx[mid] = NO_SFX
            sb = qb = 0.0
            lob, hib = INF, -INF
        if not spc and x == x:
            if head == tail:  # an empty window: this sample is the shift
                c = x
            bt[tail] = t
            bx[tail] = x
            tail += 1
            d = x - c
            sb = sb + d
            qb = qb + d * d
            lob = x if x < lob else lob
            hib = x if x > hib else hib
        f = sfx[head]  # NO_SFX when the front is empty
        cnt = tail - head
        rm = inv[cnt]  # 1/count; NaN for none
        rv = inv[cnt - 1]  # 1/(count - 1); NaN for fewer than 2
        if spc and cnt < min_count:
            rm = rv = NAN
        s = f.s + sb
        q = f.q + qb
        mr = s * rm
        m = c + mr
        # q >= s * mr up to rounding; q is inf when the squares overflow.
        sdev = sqrt((q if q == INF else pos(q - s * mr)) * rv)
        co[i] = cnt
        mo[i] = m
        so[i] = sdev
        if spc:
            lo[i] = m - k * sdev
            hi[i] = m + k * sdev
        elif cnt:
            lo[i] = f.lo if f.lo < lob else lob
            hi[i] = f.hi if f.hi > hib else hib
        else:
            lo[i] = hi[i] = NAN
        if spc and x == x:  # after its statistics: the sample is not in its own window
            if head == tail:
                c = x
            bt[tail] = t
            bx[tail] = x
            tail += 1
            d = x - c
            sb = sb + d
            qb = qb + d * d
            lob = x if x < lob else lob
            hib = x if x > hib else hib
    w.head, w.mid, w.tail = head, mid, tail
    w.shift, w.sb, w.qb, w.lob, w.hib = c, sb, qb, lob, hib


cdef class _Window:
    # The window's samples sit in Buf slots [head, tail). The front stack is [head, mid):
    # sfx[i] aggregates slots i..mid-1. The back stack is [mid, tail), aggregated in
    # (sb, qb, lob, hib). Sums are of d = x - shift, so merging is adding; `shift` is a
    # sample of the window (see the module docstring).
    cdef Buf buf
    cdef double shift, sb, qb, lob, hib
    cdef double width, k, last_time
    cdef int64_t min_count  # mean and SD need this many values (SPC); 0: rolling
    cdef bint exclude  # the sample's own window leaves it out (SPC)

    def __cinit__(self, *args):
        buf_init(&self.buf, True)
        self.shift = NAN
        self.sb = self.qb = 0.0
        self.lob, self.hib = INF, -INF
        self.last_time = -np.inf

    def __dealloc__(self):
        buf_free(&self.buf)

    cdef tuple slide(self, const double[::1] times, const double[::1] values):
        cdef Py_ssize_t start, stop, n = values.shape[0]
        cdef Run w
        count, mean, sd, low, high = _columns(n, 5, True)
        cdef int64_t[::1] co = count
        cdef double[::1] mo = mean, so = sd, lo = low, hi = high
        if n == 0:
            return count, mean, sd, low, high
        _check_order(times[0], self.last_time)
        w.width, w.k, w.min_count = self.width, self.k, self.min_count
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            buf_reserve(&self.buf, stop - start)
            _inverses(self.buf.cap)
            w.t, w.x, w.sfx, w.inv = self.buf.t, self.buf.x, self.buf.sfx, _INV
            w.head, w.mid, w.tail = self.buf.head, self.buf.mid, self.buf.tail
            w.shift, w.sb, w.qb, w.lob, w.hib = self.shift, self.sb, self.qb, self.lob, self.hib
            with nogil:
                if self.exclude:
                    _stretch(&w, &times[0], &values[0], start, stop, &co[0], &mo[0], &so[0],
                             &lo[0], &hi[0], True)
                else:
                    _stretch(&w, &times[0], &values[0], start, stop, &co[0], &mo[0], &so[0],
                             &lo[0], &hi[0], False)
            self.buf.head, self.buf.mid, self.buf.tail = w.head, w.mid, w.tail
            self.shift, self.sb, self.qb, self.lob, self.hib = w.shift, w.sb, w.qb, w.lob, w.hib
        self.last_time = times[n - 1]
        return count, mean, sd, low, high


cdef class RollingState(_Window):
    def __init__(self, double window):
        self.width = window
        self.min_count, self.exclude, self.k = 0, False, NAN

    def update(self, const double[::1] times, const double[::1] values):
        return self.slide(times, values)


def rolling(const double[::1] times, const double[::1] values, double window):
    return RollingState(window).update(times, values)


cdef class SPCBandState(_Window):
    def __init__(self, double window, double k, int64_t min_count):
        self.width, self.k, self.min_count, self.exclude = window, k, min_count, True

    def update(self, const double[::1] times, const double[::1] values):
        return self.slide(times, values)


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
        delta, since = _columns(n, 2)
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
#
# z = a·x + b·z is one multiply-add a sample on the critical path (latency bound). Here the
# stream is cut into segments of SEG samples, counted from the first sample the state saw.
# Within a segment, y is the same recurrence started from 0 and p the product of b over
# its non-NaN samples, so z = y + p·c with c the z at the end of the previous segment: the
# y and p of successive segments do not depend on each other; only c carries over, one
# multiply-add a segment. The segment boundaries depend on the sample's position in the
# stream only, so a stream fed in chunks of any size gives exactly the batch answer. A NaN
# sample leaves y and p as they are, so its output repeats the previous one exactly, as in
# the reference. A segment that starts before the first value (c NaN) runs the reference
# recurrence itself. Against the reference, z differs by rounding only (a few ulp of the
# largest |x| so far; the suite checks 1e-12 of it).
#
# Whole segments run in C (telemon_ewma_segments), a group at a time where the compiler has
# GCC vector extensions (GCC, Clang; elsewhere one at a time, scalar). First the y of the
# group's segments without the NaN rule, written to the output: with AVX2 (chosen at run
# time) 16 segments, four per 32-byte vector; else 8, two per 16-byte vector (SSE2); the
# samples are transposed into and out of the vectors' lanes on the way. Then, segment by
# segment, z = y + b^(j+1)·c from a table up to the segment's first NaN sample (y there is
# NaN, and there is none before it, so p = b^(j+1)), and from that sample on the scalar
# code with the NaN rule (a segment in seven has a NaN at 1 % NaN, half a segment each). c
# for the next segment is computed in a register, not read back from the output. Every
# path does the same operations as the scalar code below (a·x + b·y, p·b, y + p·c; no FMA),
# so batch and chunked input give the same bits, with AVX2 or without.
#
# MACD stays the plain recurrence, exact: its three averages already give the processor
# independent work, and the segmented form measured no faster (its multiplies, not the
# chain, set the pace; for a year of samples, writing its three columns does).

cdef extern from *:
    """
    #define TELEMON_SEG 16
    /* From sample f of a segment on (y, p the state after sample f - 1): z to o; the
       segment's last z. */
    static double telemon_ewma_tail(const double *x, double *o, int f, double a, double y,
                                    double p, double c) {
        const double b = 1.0 - a;
        for (int j = f; j < TELEMON_SEG; j++) {
            double v = x[j];
            if (v == v) {
                y = a * v + b * y;
                p = p * b;
            }
            o[j] = y + p * c;
        }
        return o[TELEMON_SEG - 1];
    }
    static double telemon_ewma_segment(const double *x, double *o, double a, double c) {
        return telemon_ewma_tail(x, o, 0, a, 0.0, 1.0, c);
    }
    #if defined(__GNUC__)
    /* n segments whose y (no NaN rule) is in o: their z, c the z before them. */
    static inline double telemon_ewma_fix(const double *x, double *o, int n, double a,
                                          double c, const double *pw) {
        enum { S = TELEMON_SEG };
        for (int k = 0; k < n; k++, o += S, x += S) {
            double last = o[S - 1];
            int f = S;
            if (last != last)  /* a NaN sample: find the first */
                for (f = 0; f < S && x[f] == x[f]; f++) {}
            double y = f ? o[f - 1] : 0.0;
            for (int j = 0; j < f; j++)
                o[j] = o[j] + pw[j] * c;
            c = f == S ? last + pw[S - 1] * c
                       : telemon_ewma_tail(x, o, f, a, y, f ? pw[f - 1] : 1.0, c);
        }
        return c;
    }
    typedef double telemon_v2 __attribute__((vector_size(16), aligned(8), __may_alias__));
    /* 8 segments: the y of segments 2k and 2k + 1 in the lanes of y[k]. */
    static double telemon_ewma_group(const double *x, double *o, double a, double c,
                                     const double *pw) {
        enum { S = TELEMON_SEG };
        const double b = 1.0 - a;
        const telemon_v2 va = {a, a}, vb = {b, b};
        telemon_v2 y[4] = {{0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}};
        for (int j = 0; j < S; j += 2) {  /* two samples a step, stored as pairs */
            for (int k = 0; k < 4; k++) {
                telemon_v2 u = *(const telemon_v2 *)(x + 2 * k * S + j);
                telemon_v2 v = *(const telemon_v2 *)(x + (2 * k + 1) * S + j);
                telemon_v2 y0 = vb * y[k] + va * (telemon_v2){u[0], v[0]};
                y[k] = vb * y0 + va * (telemon_v2){u[1], v[1]};
                *(telemon_v2 *)(o + 2 * k * S + j) = (telemon_v2){y0[0], y[k][0]};
                *(telemon_v2 *)(o + (2 * k + 1) * S + j) = (telemon_v2){y0[1], y[k][1]};
            }
        }
        return telemon_ewma_fix(x, o, 8, a, c, pw);
    }
    #if defined(__x86_64__) || defined(__i386__)
    #define TELEMON_AVX2 1
    #include <immintrin.h>
    /* 16 segments: the y of segments 4k .. 4k + 3 in the lanes of y[k]; four samples of
       four segments a step, transposed with 128-bit halves. */
    __attribute__((target("avx2")))
    static double telemon_ewma_group_avx2(const double *x, double *o, double a, double c,
                                          const double *pw) {
        enum { S = TELEMON_SEG };
        const __m256d va = _mm256_set1_pd(a), vb = _mm256_set1_pd(1.0 - a);
        __m256d y[4];
        for (int k = 0; k < 4; k++)
            y[k] = _mm256_setzero_pd();
        #define TELEMON_ROWS(p, q) \
            _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(p)), _mm_loadu_pd(q), 1)
        #define TELEMON_STEP(y, col) \
            _mm256_add_pd(_mm256_mul_pd(vb, y), _mm256_mul_pd(va, col))
        for (int j = 0; j < S; j += 4) {
            for (int k = 0; k < 4; k++) {
                const double *r = x + 4 * k * S + j;
                double *w = o + 4 * k * S + j;
                __m256d A = TELEMON_ROWS(r, r + 2 * S), B = TELEMON_ROWS(r + S, r + 3 * S);
                __m256d C = TELEMON_ROWS(r + 2, r + 2 * S + 2);
                __m256d D = TELEMON_ROWS(r + S + 2, r + 3 * S + 2);
                __m256d y0 = TELEMON_STEP(y[k], _mm256_unpacklo_pd(A, B));
                __m256d y1 = TELEMON_STEP(y0, _mm256_unpackhi_pd(A, B));
                __m256d y2 = TELEMON_STEP(y1, _mm256_unpacklo_pd(C, D));
                __m256d y3 = TELEMON_STEP(y2, _mm256_unpackhi_pd(C, D));
                y[k] = y3;
                __m256d L01 = _mm256_unpacklo_pd(y0, y1), H01 = _mm256_unpackhi_pd(y0, y1);
                __m256d L23 = _mm256_unpacklo_pd(y2, y3), H23 = _mm256_unpackhi_pd(y2, y3);
                _mm_storeu_pd(w, _mm256_castpd256_pd128(L01));
                _mm_storeu_pd(w + 2, _mm256_castpd256_pd128(L23));
                _mm_storeu_pd(w + S, _mm256_castpd256_pd128(H01));
                _mm_storeu_pd(w + S + 2, _mm256_castpd256_pd128(H23));
                _mm_storeu_pd(w + 2 * S, _mm256_extractf128_pd(L01, 1));
                _mm_storeu_pd(w + 2 * S + 2, _mm256_extractf128_pd(L23, 1));
                _mm_storeu_pd(w + 3 * S, _mm256_extractf128_pd(H01, 1));
                _mm_storeu_pd(w + 3 * S + 2, _mm256_extractf128_pd(H23, 1));
            }
        }
        #undef TELEMON_ROWS
        #undef TELEMON_STEP
        return telemon_ewma_fix(x, o, 16, a, c, pw);
    }
    #endif
    #endif
    /* 1 when the AVX2 path runs (the processor has it), 0 for the SSE2/scalar one. */
    static int telemon_ewma_avx2 = -1;
    static int telemon_ewma_set_avx2(int on) {
        int was = telemon_ewma_avx2;
    #if defined(TELEMON_AVX2)
        telemon_ewma_avx2 = on && __builtin_cpu_supports("avx2");
    #else
        telemon_ewma_avx2 = 0;
    #endif
        return was;
    }
    /* n whole segments from x to o, c the z before them (not NaN); returns the last z. */
    static double telemon_ewma_segments(const double *x, double *o, Py_ssize_t n, double a,
                                        double c) {
        Py_ssize_t s = 0;
    #if defined(__GNUC__)
        double pw[TELEMON_SEG], p = 1.0;  /* pw[j] = b^(j+1), as the scalar p */
        for (int j = 0; j < TELEMON_SEG; j++)
            pw[j] = p = p * (1.0 - a);
    #if defined(TELEMON_AVX2)
        if (telemon_ewma_avx2)
            for (; s + 16 <= n; s += 16)
                c = telemon_ewma_group_avx2(x + s * TELEMON_SEG, o + s * TELEMON_SEG, a, c,
                                            pw);
    #endif
        for (; s + 8 <= n; s += 8)
            c = telemon_ewma_group(x + s * TELEMON_SEG, o + s * TELEMON_SEG, a, c, pw);
    #endif
        for (; s < n; s++)
            c = telemon_ewma_segment(x + s * TELEMON_SEG, o + s * TELEMON_SEG, a, c);
        return c;
    }
    """
    enum: SEG "TELEMON_SEG"
    double ewma_segments "telemon_ewma_segments"(const double *x, double *o, Py_ssize_t n,
                                                 double a, double c) noexcept nogil
    int ewma_set_avx2 "telemon_ewma_set_avx2"(int on) noexcept nogil


ewma_set_avx2(True)


def _ewma_avx2(bint on):
    """Run the EWMA's AVX2 path when `on` and the processor has AVX2, else the SSE2 one;
    returns whether it ran before. For the suite, which checks both paths."""
    return bool(ewma_set_avx2(on))


cdef struct EWMA:
    double alpha, beta, c, y, p
    Py_ssize_t pos  # samples of the current segment seen so far


cdef void ewma_feed(EWMA *s, const double *values, double *o, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0, k, at = s.pos
    cdef double x, z, a = s.alpha, b = s.beta, c = s.c, y = s.y, p = s.p
    while i < n:
        if at == 0 and c == c and i + SEG <= n:  # whole segments, the common case
            k = (n - i) // SEG
            c = ewma_segments(&values[i], &o[i], k, a, c)
            i += k * SEG
            continue
        if at == 0 and c == c:
            y = 0.0
            p = 1.0
        x = values[i]
        if c == c:
            if x == x:
                y = a * x + b * y
                p = p * b
            z = y + p * c
        else:  # before the first value: the reference recurrence, y is z
            if x == x:
                y = x if y != y else a * x + b * y
            z = y
        o[i] = z
        i += 1
        at += 1
        if at == SEG:
            c = z
            at = 0
    s.c, s.y, s.p, s.pos = c, y, p, at


cdef inline void ewma_init(EWMA *s, double alpha) noexcept nogil:
    s.alpha, s.beta = alpha, 1.0 - alpha
    s.c = s.y = NAN  # no value yet: y is z itself until a segment starts with one
    s.p = 1.0
    s.pos = 0


cdef object ewma_run(EWMA *s, values):
    """The outputs of feeding s `values`, a 1-D C-contiguous float64 buffer (what a const
    double[::1] argument takes). Through the buffer protocol itself: the two typed
    memoryviews cost ~0.3 µs more a call, 6 % of it at the alarm engine's 5,000 samples."""
    cdef Py_buffer v, w
    PyObject_GetBuffer(values, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    try:
        if v.ndim != 1 or strcmp(v.format, "d") != 0:
            raise ValueError(f"expected a 1-D float64 buffer, got format "
                             f"{v.format.decode()!r} with {v.ndim} dimensions")
        out = np.empty(v.shape[0])
        PyObject_GetBuffer(out, &w, PyBUF_SIMPLE | PyBUF_WRITABLE)
        with nogil:
            ewma_feed(s, <const double *>v.buf, <double *>w.buf, v.shape[0])
        PyBuffer_Release(&w)
    finally:
        PyBuffer_Release(&v)
    return out


cdef class EWMAState:
    cdef EWMA s

    def __init__(self, double alpha):
        ewma_init(&self.s, alpha)

    def update(self, values):
        return ewma_run(&self.s, values)


def ewma(values, double alpha):
    """EWMAState(alpha).update(values), without the state object."""
    cdef EWMA s
    ewma_init(&s, alpha)
    return ewma_run(&s, values)


cdef class MACDState:
    cdef double a1, b1, a2, b2, a3, b3, fast, slow, signal

    def __init__(self, double fast_alpha, double slow_alpha, double signal_alpha):
        self.a1, self.b1 = fast_alpha, 1.0 - fast_alpha
        self.a2, self.b2 = slow_alpha, 1.0 - slow_alpha
        self.a3, self.b3 = signal_alpha, 1.0 - signal_alpha
        self.fast = self.slow = self.signal = NAN

    def update(self, const double[::1] values):
        cdef Py_ssize_t i, n = values.shape[0]
        macd, signal, hist = _columns(n, 3)
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
        upper, lower, alarm = _columns(n, 2, False, True)
        cdef double[::1] uo = upper, lo = lower
        cdef signed char[::1] ao = alarm
        cdef double x, z, mu = self.mu, sigma = self.sigma, k = self.k, h = self.h
        cdef double up = self.upper, dn = self.lower
        cdef bint use_up = self.use_upper, use_dn = self.use_lower
        cdef signed char a
        with nogil:
            for i in range(n):
                x = values[i]
                if x == x:
                    z = (x - mu) / sigma  # off the statistics' chains: one add, one max
                    if use_up:
                        up = pos(up + (z - k))
                    if use_dn:
                        dn = pos(dn - (z + k))
                uo[i] = up
                lo[i] = dn
                a = 0
                if up > h:
                    a = 1
                    up = 0.0
                if dn > h:
                    a = -1
                    dn = 0.0
                ao[i] = a
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
