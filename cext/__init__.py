"""Signal-processing kernels: `_core` (Cython, compiled at install) and `reference` (NumPy).

Use them through `telemon.dsp`, which validates inputs and picks the implementation.
"""
