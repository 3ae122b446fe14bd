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
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from telemon import __version__
from telemon.codes import KNOWN
from telemon.hookspecs import hookimpl
from telemon.models import LimitSet
from telemon.modules import DiseaseModule, Schedule

CODES = ("spo2", "pulse", "temperature", "weight", "fev1")


def summarise(latest: Mapping[str, float]) -> str:
    """One line for the nurse: the latest value of each measured code, with its unit."""
    parts = [f"{KNOWN[code].display} {latest[code]:g} {KNOWN[code].unit}"
             for code in CODES if code in latest]
    return ", ".join(parts) or "no measurements yet"


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
    sources=(
        "Cooper CB et al. 2020, SpO2 < 90 % and COPD exacerbations",
        "O'Driscoll BR et al., BTS guideline for oxygen use in adults, Thorax 2017",
        "TELBIL telemonitoring trial fixed thresholds",
    ),
)


@hookimpl
def register_modules(register):
    register(MODULE)
