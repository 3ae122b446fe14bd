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
TELEMON = "urn:telemon:measure"
"""telemon's own code system, for measures with neither an MDC nor a LOINC code (the code is
the measure's key); exporters also send the Danish code where one exists."""


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
    ehealth: tuple[str, str] | None = None  # the national infrastructure's code, if not `danish`

    @property
    def ehealth_code(self) -> tuple[str, str] | None:
        """The code the eHealth infrastructure's ehealth-observation-codes value set uses
        (FHIR); `danish` is MedCom's, used in PHMR documents, where the two differ."""
        return self.ehealth or self.danish

    @property
    def code(self) -> Code:
        """The canonical coding an Observation carries."""
        if self.mdc is not None:
            return Code(system=MDC, code=str(self.mdc), display=self.display)
        if self.loinc is not None:
            return Code(system=LOINC, code=self.loinc, display=self.display)
        return Code(system=TELEMON, code=self.key, display=self.display)


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
        # home blood pressure: MedCom's PHMR value set has MCS88019/20, the eHealth
        # observation-codes value set DNK05472/3 (both in shared/data/fhir-dk-ehealth)
        MeasureCode("bp_sys", "Systolic blood pressure", 150021, "8480-6", "mm[Hg]",
                    (MCS, "MCS88019"), (40, 300), ehealth=(NPU, "DNK05472")),
        MeasureCode("bp_dia", "Diastolic blood pressure", 150022, "8462-4", "mm[Hg]",
                    (MCS, "MCS88020"), (20, 200), ehealth=(NPU, "DNK05473")),
        MeasureCode("bp_mean", "Mean arterial pressure", 150023, "8478-0", "mm[Hg]", None,
                    (20, 250), verified=False),
        MeasureCode("temperature", "Body temperature", 150364, "8310-5", "Cel",
                    (NPU, "NPU08676"), (30, 45)),
        MeasureCode("glucose", "Capillary blood glucose", 160184, "2339-0", "mmol/L",
                    (NPU, "NPU22089"), (0.5, 50), verified=False),
        MeasureCode("resp_rate", "Respiratory rate", 151562, "9279-1", "/min", None, (2, 80)),
        MeasureCode("fev1", "FEV1", 152586, "20150-9", "L", (MCS, "MCS88015"), (0.1, 8),
                    verified=False),
        # Added for the Bluetooth SIG health-profile drivers (plugins/drivers/ble_*.py).
        # MDC numbers = partition x 65536 + term. Terms checked against public ISO/IEEE
        # 11073-10101 constant tables (Antidote/Signove 11073 stack headers, the Continua
        # nomenclature tables of several open-source PHD managers) and, where named, FHIR
        # IGs; the Danish codes and UCUM units against the eHealth infrastructure's
        # ehealth-observation-codes value set and obs-code-to-ucum concept map
        # (shared/data/fhir-dk-ehealth). `verified=False`: one source only, or a LOINC or unit
        # choice not confirmed - check before export.
        # MDC_RATIO_MASS_BODY_LEN_SQ (2::57680); NPU27281 kg/m2.
        MeasureCode("bmi", "Body mass index", 188752, "39156-5", "kg/m2", (NPU, "NPU27281"),
                    (10, 80)),
        # MDC_LEN_BODY_ACTUAL (2::57668); NPU03794 in m.
        MeasureCode("height", "Body height", 188740, "8302-2", "m", (NPU, "NPU03794"),
                    (0.4, 2.5)),
        # MDC_PULS_OXIM_PERF_REL (2::19376): the PLX Pulse Amplitude Index, %. No LOINC checked.
        MeasureCode("perfusion_index", "Pulse amplitude index (perfusion)", 150448, None, "%",
                    None, (0, 30), verified=False),
        # MDC_ECG_TIME_PD_RR_GL (2::16168); the MII Kardio IG's RR-interval example uses 147240
        # (in ms); telemon keeps RR intervals in seconds. No LOINC checked.
        MeasureCode("rr_interval", "RR interval", 147240, None, "s", None, (0.2, 3.0)),
        # MDC_HF_ENERGY (partition 129 PHD_HF, term 119). The Heart Rate Service reports kJ;
        # whether 11073-10441 expects kJ or kcal with this code is unchecked.
        MeasureCode("energy_expended", "Energy expended", 8454263, None, "kJ", None,
                    (0, 65535), verified=False),
        # Glucose by sample type (11073-10417; Glucose Service type nibble). 160184 capillary
        # whole blood is "glucose" above. MDC_CONC_GLU_* terms 28948, 29116..29140, 29292/6.
        MeasureCode("glucose_gen", "Glucose (sample type not stated)", 160020, None, "mmol/L",
                    None, (0.5, 50), verified=False),
        MeasureCode("glucose_cap_plasma", "Capillary plasma glucose", 160188, None, "mmol/L",
                    None, (0.5, 50), verified=False),
        MeasureCode("glucose_ven_blood", "Venous whole blood glucose", 160192, None, "mmol/L",
                    None, (0.5, 50), verified=False),
        MeasureCode("glucose_ven_plasma", "Venous plasma glucose", 160196, None, "mmol/L",
                    None, (0.5, 50), verified=False),
        MeasureCode("glucose_art_blood", "Arterial whole blood glucose", 160200, None,
                    "mmol/L", None, (0.5, 50), verified=False),
        MeasureCode("glucose_art_plasma", "Arterial plasma glucose", 160204, None, "mmol/L",
                    None, (0.5, 50), verified=False),
        MeasureCode("glucose_control", "Glucose control solution (not a patient value)",
                    160208, None, "mmol/L", None, (0.5, 50), verified=False),
        MeasureCode("glucose_isf", "Interstitial fluid glucose", 160212, None, "mmol/L", None,
                    (0.5, 50), verified=False),
        MeasureCode("glucose_und_blood", "Whole blood glucose (site undetermined)", 160364,
                    None, "mmol/L", None, (0.5, 50), verified=False),
        MeasureCode("glucose_und_plasma", "Plasma glucose (site undetermined)", 160368, None,
                    "mmol/L", None, (0.5, 50), verified=False),
        # --- scores and measures of the disease modules: COPD and heart failure
        # CAT total 0-40 (Jones et al. 2009); MCS88137 in the eHealth observation-codes value
        # set; LOINC 89250-2 unverified (shared/CODES.md)
        MeasureCode("cat_score", "COPD Assessment Test score", None, "89250-2", "{score}",
                    (MCS, "MCS88137"), (0, 40), verified=False),
        # mMRC dyspnoea grade 0-4 (GOLD; Bestall et al. 1999 for the MRC scale). No MDC or
        # LOINC code checked: telemon's own. The eHealth value set's MCS88021 "MRC
        # skala;Pt(KOL)" does not say whether it is the MRC (1-5) or the mMRC (0-4): not used.
        MeasureCode("mmrc_grade", "mMRC dyspnoea grade", None, None, "{grade}", None, (0, 4)),
        # --- scores and measures of the disease modules: low back pain and hearing
        # Pain intensity, 0-10 numeric rating scale, from the lbp_daily questionnaire. LOINC
        # 72514-3 "Pain severity - 0-10 verbal numeric rating [Score] - Reported": from the
        # LOINC table, not in shared/CODES.md, so unverified here.
        MeasureCode("pain_nrs", "Pain (NRS 0-10)", None, "72514-3", "{score}", None, (0, 10),
                    verified=False),
        # Roland-Morris Disability Questionnaire, 0-24 (Roland & Morris, Spine 1983): no
        # code checked, telemon's own system.
        MeasureCode("rmdq_score", "Roland-Morris disability score", None, None, "{score}",
                    None, (0, 24)),
        # STarT Back Screening Tool (Hill et al. 2008): total 0-9, psychosocial subscale
        # (items 5-9) 0-5, risk group 0 low / 1 medium / 2 high. No codes checked.
        MeasureCode("startback_total", "STarT Back total score", None, None, "{score}", None,
                    (0, 9)),
        MeasureCode("startback_psychosocial", "STarT Back psychosocial subscore", None, None,
                    "{score}", None, (0, 5)),
        MeasureCode("startback_risk", "STarT Back risk group (0 low, 1 medium, 2 high)", None,
                    None, "{score}", None, (0, 2)),
        # Steps per day: MCS88192 "Skridt per dag;Pt" in the eHealth observation-codes value
        # set, whose obs-code-to-ucum concept map gives the unit "/d" (both in
        # shared/data/fhir-dk-ehealth); LOINC 55423-8 unverified (shared/CODES.md).
        MeasureCode("steps", "Steps per day", None, "55423-8", "/d", (MCS, "MCS88192"),
                    (0, 100_000), verified=False),
        # The fraction of the day's prescribed exercise the citizen did (back-pain exercise
        # programme); telemon's own measure.
        MeasureCode("exercise_adherence", "Exercise adherence", None, None, "%", None,
                    (0, 100)),
        # Hours per day a hearing aid was on, from the aid's data log (Demant 2021 facts in
        # shared/CLINICAL.md); telemon's own measure.
        MeasureCode("hearing_aid_use", "Hearing-aid use", None, None, "h", None, (0, 24)),
        # Pure-tone audiogram, one observation per ear and test; its components are the
        # thresholds per frequency (hl_*). UCUM has the decibel "dB" but no hearing-level
        # unit ("dB[HL]" is not UCUM): the unit is dB and the code says it is hearing level.
        # Audiometers test -10 to 120 dB HL. No codes checked: telemon's own system.
        MeasureCode("audiogram_left", "Audiogram, left ear (dB HL)", None, None, "dB", None,
                    (-10, 120)),
        MeasureCode("audiogram_right", "Audiogram, right ear (dB HL)", None, None, "dB", None,
                    (-10, 120)),
        *(MeasureCode(f"hl_{hz}", f"Hearing threshold {hz} Hz (dB HL)", None, None, "dB",
                      None, (-10, 120))
          for hz in (250, 500, 1000, 2000, 3000, 4000, 6000, 8000)),
    )
}

BY_CODE: dict[tuple[str, str], MeasureCode] = {
    (m.code.system, m.code.code): m for m in KNOWN.values()
}


def lookup(code: Code) -> MeasureCode | None:
    """The known measure for a coding, or None."""
    return BY_CODE.get((code.system, code.code))
