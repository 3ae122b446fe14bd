import numpy as np
import pytest


@pytest.fixture(scope="session")
def spo2_series():
    """A year of SpO2 at one reading a minute (525,600 samples), with 1 % NaN."""
    rng = np.random.default_rng(7)
    values = rng.normal(93, 3, 525_600)
    values[rng.random(values.size) < 0.01] = np.nan
    return values
