"""Signal processing for alarms: validated Python API over the compiled Cython kernels.

Inputs are checked once here (lengths, sortedness, dtype) with clear errors, then handed to
the kernels in telemon.cext. `TELEMON_PUREPYTHON=1` selects the NumPy reference kernels;
`IMPLEMENTATION` says which this process uses ("compiled", "reference", or "mixed" when only
some kernels were built).
"""

from telemon.dsp._select import CHOSEN
from telemon.dsp.series import *  # noqa: F403
from telemon.dsp.series import __all__ as _series_all
from telemon.dsp.waveform import *  # noqa: F403
from telemon.dsp.waveform import __all__ as _waveform_all

__all__ = [*_series_all, *_waveform_all, "IMPLEMENTATION"]

_kinds = set(CHOSEN.values())
IMPLEMENTATION = _kinds.pop() if len(_kinds) == 1 else "mixed"
