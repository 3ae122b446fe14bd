"""COPD: oxygen saturation, pulse, temperature, weight and FEV1 at home.

Default limits (every one is overridden per patient by the referring doctor; in Danish
practice no national defaults are published, TeleCare Nord):
- SpO2 yellow below 90 %: SpO2 < 90 % agreed with exacerbations (Cooper et al. 2020,
  kappa 0.47-0.56). Red below 88 %: the bottom of the 88-92 % target range for patients at
  risk of hypercapnic respiratory failure (BTS guideline for oxygen use in adults,
  O'Driscoll et al., Thorax 2017).
- Pulse yellow below 50 or above 100 /min; temperature yellow above 37 Cel: fixed thresholds
  of the TELBIL telemonitoring trial.
- Weight and FEV1 have no fixed limits: they are judged against the patient's own baseline.

Trend rule:
- spo2_sustained_low (red): every SpO2 reading below the patient's yellow-low limit for at
  least 24 hours. One low reading is a yellow alarm by the limits; a desaturation that
  persists across a day's readings is how exacerbations showed in home SpO2 (Cooper et al.
  2020: SpO2 < 90 % agreed with exacerbations, kappa 0.47-0.56), so it is escalated to red.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal

import numpy as np

from telemon import __version__, dsp
from telemon.codes import KNOWN
from telemon.hookspecs import hookimpl
from telemon.models import LimitSet, Triage
from telemon.modules import DiseaseModule, Finding, Rule, Schedule, Series

CODES = ("spo2", "pulse", "temperature", "weight", "fev1")


def summarise(latest: Mapping[str, float]) -> str:
    """One line for the nurse: the latest value of each measured code, with its unit."""
    parts = [f"{KNOWN[code].display} {latest[code]:g} {KNOWN[code].unit}"
             for code in CODES if code in latest]
    return ", ".join(parts) or "no measurements yet"


SUSTAINED = timedelta(hours=24)


def spo2_sustained_low(series: Series) -> list[Finding]:
    """Red when the latest SpO2 readings have all been below the yellow-low limit for at
    least SUSTAINED (telemon.dsp.threshold, low side, sustained)."""
    low = series.limits.yellow_low
    if low is None or not len(series.times):
        return []
    state = dsp.threshold(series.times, series.values, low=float(low),
                          sustain=SUSTAINED.total_seconds())
    if state[-1] != -1:
        return []
    not_low = np.flatnonzero(series.values >= float(low))  # NaN readings are neither
    run = int(not_low[-1]) + 1 if len(not_low) else 0  # this episode's first low reading
    hours = (series.times[-1] - series.times[run]) / 3600
    return [Finding(Triage.RED, f"SpO2 below {low} % on every reading for {hours:.0f} h "
                    f"({len(state) - run} readings)", series.ids[run:])]


MODULE = DiseaseModule(
    name="copd",
    version=__version__,
    title="Chronic obstructive pulmonary disease",
    codes=CODES,
    default_limits={
        "spo2": LimitSet(red_low=Decimal(88), yellow_low=Decimal(90)),
        "pulse": LimitSet(yellow_low=Decimal(50), yellow_high=Decimal(100)),
        "temperature": LimitSet(yellow_high=Decimal(37)),
    },
    schedule=Schedule(codes=("spo2", "pulse")),
    summarise=summarise,
    rules=(Rule("spo2_sustained_low",
                "SpO2 below the yellow-low limit on every reading for 24 h (Cooper 2020)",
                ("spo2",), spo2_sustained_low, window=timedelta(days=7)),),
    sources=(
        "Cooper CB et al. 2020, SpO2 < 90 % and COPD exacerbations",
        "O'Driscoll BR et al., BTS guideline for oxygen use in adults, Thorax 2017",
        "TELBIL telemonitoring trial fixed thresholds",
    ),
)


@hookimpl
def register_modules(register):
    register(MODULE)
