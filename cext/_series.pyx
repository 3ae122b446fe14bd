# cython: language_level=3
"""Compiled kernels over timestamped series. Called only through telemon.dsp, which validates.

Every function here has a twin of the same name in series_reference.py; the suite compares them.
"""

import numpy as np

cdef signed char NO_VALUE = -128


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
