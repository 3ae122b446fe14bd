"""Measurement codes telemon knows, keyed by a short name used in config and rules.

Canonical code: IEEE 11073-10101 MDC (partition x 65536 + term). Alongside: LOINC for FHIR
vital signs, the Danish code (NPU, urn:oid:1.2.208.176.2.1, or MedCom MCS,
urn:oid:1.2.208.184.100.8) the national infrastructure's ehealth-observation-codes value set
uses, and the UCUM unit. Source of the numbers: shared/CODES.md, which cites ISO/IEEE
11073-10101, the HL7 PHD IG and the eHealth Infrastructure IG 8.0.0. Codes marked
*unverified* there are marked `verified=False` here and must be checked before export.

`plausible` is the range a limit for that code may take in config: outside it, a limit is
certainly a typing error (a SpO2 limit of 900), not a clinical choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from telemon.models import Code

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
NPU = "urn:oid:1.2.208.176.2.1"
MCS = "urn:oid:1.2.208.184.100.8"


@dataclass(frozen=True)
class MeasureCode:
    key: str
    display: str
    mdc: int | None
    loinc: str | None
    unit: str
    danish: tuple[str, str] | None  # (system, code)
    plausible: tuple[float, float]
    verified: bool = True

    @property
    def code(self) -> Code:
        """The canonical coding an Observation carries."""
        if self.mdc is not None:
            return Code(system=MDC, code=str(self.mdc), display=self.display)
        return Code(system=LOINC, code=self.loinc or "", display=self.display)


KNOWN: dict[str, MeasureCode] = {
    m.key: m
    for m in (
        MeasureCode("spo2", "SpO2", 150456, "2708-6", "%", (NPU, "NPU03011"), (50, 100)),
        MeasureCode("pulse", "Pulse rate", 149530, "8867-4", "/min", (NPU, "NPU21692"), (20, 250)),
        MeasureCode("pulse_bp", "Pulse rate (BP monitor)", 149546, "8867-4", "/min",
                    (NPU, "NPU21692"), (20, 250), verified=False),
        MeasureCode("heart_rate", "Heart rate (ECG)", 147842, "8867-4", "/min", None, (20, 250)),
        MeasureCode("weight", "Body weight", 188736, "29463-7", "kg", (NPU, "NPU03804"),
                    (10, 400)),
        MeasureCode("bp", "Blood pressure", 150020, "85354-9", "mm[Hg]", None, (20, 300)),
        MeasureCode("bp_sys", "Systolic blood pressure", 150021, "8480-6", "mm[Hg]",
                    (MCS, "MCS88019"), (40, 300)),
        MeasureCode("bp_dia", "Diastolic blood pressure", 150022, "8462-4", "mm[Hg]",
                    (MCS, "MCS88020"), (20, 200)),
        MeasureCode("bp_mean", "Mean arterial pressure", 150023, "8478-0", "mm[Hg]", None,
                    (20, 250), verified=False),
        MeasureCode("temperature", "Body temperature", 150364, "8310-5", "Cel",
                    (NPU, "NPU08676"), (30, 45)),
        MeasureCode("glucose", "Capillary blood glucose", 160184, "2339-0", "mmol/L",
                    (NPU, "NPU22089"), (0.5, 50), verified=False),
        MeasureCode("resp_rate", "Respiratory rate", 151562, "9279-1", "/min", None, (2, 80)),
        MeasureCode("fev1", "FEV1", 152586, "20150-9", "L", (MCS, "MCS88015"), (0.1, 8),
                    verified=False),
    )
}

BY_CODE: dict[tuple[str, str], MeasureCode] = {
    (m.code.system, m.code.code): m for m in KNOWN.values()
}


def lookup(code: Code) -> MeasureCode | None:
    """The known measure for a coding, or None."""
    return BY_CODE.get((code.system, code.code))
