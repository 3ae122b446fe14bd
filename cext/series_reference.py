"""NumPy reference of the compiled series kernels (_series.pyx): same functions, same answers.

Selected with TELEMON_PUREPYTHON=1; the suite runs both ways and compares them directly.
"""

import numpy as np

NO_VALUE = -128


def limit_bands(values, red_low, yellow_low, yellow_high, red_high):
    band = np.zeros(len(values), dtype=np.int8)
    # Later assignments win, so the order mirrors the compiled if/elif chain in reverse.
    band[values > yellow_high] = 1
    band[values < yellow_low] = -1
    band[values > red_high] = 2
    band[values < red_low] = -2
    band[np.isnan(values)] = NO_VALUE
    return band
