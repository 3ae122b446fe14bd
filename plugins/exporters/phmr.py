"""Danish PHMR export: one HL7 CDA R2 Personal Health Monitoring Report per patient and period.

The document follows MedCom's Danish profile PHMR-DK 1.3 (MedCom, "PHMR-DK Profile v1.3",
and its published weight example): the international PHMR template 2.16.840.1.113883.10.20.9
and the Danish 1.2.208.184.11.1; document code LOINC 53576-5; sections Vital Signs (LOINC
8716-3), Results (30954-2) and Medical Equipment (46264-8); each reading an organizer holding
numeric observations coded in NPU / MedCom MCS (with LOINC and IEEE 11073 MDC translations),
a UCUM physical quantity, method codes saying the citizen measured and the device sent it,
and the alarm ranges in force as reference ranges (telemon.export.alarm_ranges: MedCom "RAL"
red, "GAL" yellow). A reading without a Danish code is left out: the profile admits only
codes from MedCom's PHMR observation value set.

Files: `<directory>/<patient>/<period>.xml`, the period a local day (2026-03-01) or ISO week
(2026-W09) in the option `timezone`. Delivery is idempotent: the existing document is read,
a reading already in it (by observation id) is kept as it is, and only when readings were
added is the document rewritten (atomically), with the next version number of its set.

The patient is identified by telemon's pseudonym only (telemon.export.id_root("patient")),
never a CPR number and without name or address: the receiver adds those. The custodian is
the organisation's SOR code when the option `custodian_sor` gives it.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telemon import __version__
from telemon.codes import LOINC, MCS, NPU, MeasureCode, lookup
from telemon.export import (
    INTERPRETATIONS,
    MEDCOM_MESSAGE_CODES,
    ExportError,
    PartAssessment,
    assessments,
    id_root,
    is_vital_sign,
    observation_parts,
)
from telemon.exporters import Exporter, Option
from telemon.files import write_atomically
from telemon.hookspecs import hookimpl
from telemon.models import AbsentReason, Component, Observation, Record

NS = "urn:hl7-org:v3"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
# CDA elements are written unprefixed (`default_namespace=` of ElementTree.tostring refuses
# the plain attribute names CDA uses, so the namespace is registered as the default).
ET.register_namespace("", NS)

LOINC_OID = "2.16.840.1.113883.6.1"
MDC_OID = "2.16.840.1.113883.6.24"
SNOMED_OID = "2.16.840.1.113883.6.96"
INTERPRETATION_OID = "2.16.840.1.113883.5.83"
SOR_OID = "1.2.208.176.1.1"
CODE_SYSTEMS = {NPU: ("1.2.208.176.2.1", "NPU terminologien"),
                MCS: ("1.2.208.184.100.8", "MedCom Measurement Codes"),
                LOINC: (LOINC_OID, "LOINC")}

# Template ids, as in MedCom's PHMR-DK 1.3 example documents.
PHMR_TEMPLATE = "2.16.840.1.113883.10.20.9"
DANISH_PHMR_TEMPLATE = "1.2.208.184.11.1"
VITAL_SIGNS_SECTION = ("2.16.840.1.113883.10.20.1.16", "2.16.840.1.113883.10.20.9.2",
                       DANISH_PHMR_TEMPLATE)
RESULTS_SECTION = ("2.16.840.1.113883.10.20.1.14", "2.16.840.1.113883.10.20.9.14",
                   DANISH_PHMR_TEMPLATE)
EQUIPMENT_SECTION = ("2.16.840.1.113883.10.20.1.7", "2.16.840.1.113883.10.20.9.1",
                     DANISH_PHMR_TEMPLATE)
READING_ORGANIZER = "2.16.840.1.113883.10.20.1.35"  # used in both sections by the examples
NUMERIC_OBSERVATION = ("2.16.840.1.113883.10.20.1.31", "2.16.840.1.113883.10.20.9.8")
DEVICE_ORGANIZER = "2.16.840.1.113883.10.20.9.4"
DEVICE_ROLE = ("2.16.840.1.113883.10.20.1.52", "2.16.840.1.113883.10.20.9.9")
# "This serviceEvent holds the identification and version of the CDA profile" (example).
PROFILE_VERSION_TEMPLATE = ("1.2.208.184.200.1.10", "2019-09-10")
PROFILE_VERSION_ID = ("1.2.208.184.100.3", "phmr-v1.3")

# MedCom message codes for who measured and how the value arrived (the examples' displays).
MEASURED_BY_CITIZEN = ("POT", "Målt af borger")
SENT_AUTOMATICALLY = ("AUT", "Måling overført automatisk")
TYPED_BY_CITIZEN = ("TPD", "Indtastet af borger")

# A special value as an HL7 v3 NullFlavor: outside the value domain (OTH), positive and
# negative infinity, not known at this resolution (UNK), not applicable (NA).
NULL_FLAVORS = {AbsentReason.NOT_A_NUMBER: "OTH", AbsentReason.POSITIVE_INFINITY: "PINF",
                AbsentReason.NEGATIVE_INFINITY: "NINF", AbsentReason.ERROR: "UNK",
                AbsentReason.UNSUPPORTED: "NA"}
PERIODS = ("day", "week")


def tag(name: str) -> str:
    return f"{{{NS}}}{name}"


def sub(parent: ET.Element, name: str, text: str | None = None, **attributes: str | None,
        ) -> ET.Element:
    """A child element in the CDA namespace; attributes given as None are left out."""
    child = ET.SubElement(parent, tag(name),
                          {key: value for key, value in attributes.items() if value is not None})
    child.text = text
    return child


def ts(moment: datetime, zone: ZoneInfo) -> str:
    """A CDA TS in local time with its offset, as the Danish examples write them."""
    return moment.astimezone(zone).strftime("%Y%m%d%H%M%S%z")


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y%m%d%H%M%S%z")


def period_of(moment: datetime, period: str, zone: ZoneInfo) -> str:
    local = moment.astimezone(zone)
    if period == "day":
        return local.date().isoformat()
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


# --- one reading ----------------------------------------------------------------------------


class Reading(NamedTuple):
    """One reading's entry in a document, and what the document needs to know of it."""

    moment: datetime
    vital_sign: bool
    entry: ET.Element


def reading_entry(obs: Observation, assessed: Mapping[str, PartAssessment],
                  zone: ZoneInfo) -> Reading | None:
    """The entry of a reading: an organizer of its Danish-coded parts (None if it has none)."""
    parts = [(found, part) for found, part in observation_parts(obs)
             if found is not None and found.danish is not None]
    if not parts:
        return None
    entry = ET.Element(tag("entry"), typeCode="COMP", contextConductionInd="true")
    organizer = sub(entry, "organizer", classCode="CLUSTER", moodCode="EVN")
    sub(organizer, "templateId", root=READING_ORGANIZER)
    sub(organizer, "id", root=id_root("observation"), extension=obs.id)
    sub(organizer, "statusCode", code="completed")
    sub(organizer, "effectiveTime", value=ts(obs.effective, zone))
    for found, part in parts:
        component = sub(organizer, "component", typeCode="COMP", contextConductionInd="true")
        part_id = f"{obs.id}:{found.key}" if obs.components else obs.id
        component.append(numeric_observation(obs, part_id, found, part,
                                             assessed.get(found.key), zone))
    return Reading(obs.effective, is_vital_sign(lookup(obs.code)), entry)


def numeric_observation(obs: Observation, part_id: str, found: MeasureCode,
                        part: Observation | Component, judged: PartAssessment | None,
                        zone: ZoneInfo) -> ET.Element:
    """A PHMR numeric observation; children in the order of the CDA R2 schema."""
    observation = ET.Element(tag("observation"), classCode="OBS", moodCode="EVN")
    for root in NUMERIC_OBSERVATION:
        sub(observation, "templateId", root=root)
    sub(observation, "id", root=id_root("observation"), extension=part_id)
    code = sub(observation, "code", nullFlavor="NI", codeSystem=SNOMED_OID,
               codeSystemName="SNOMED CT")
    sub(code, "originalText", found.display)
    danish_system, danish_code = found.danish
    oid, name = CODE_SYSTEMS[danish_system]
    sub(code, "translation", code=danish_code, codeSystem=oid, codeSystemName=name)
    if found.loinc:
        sub(code, "translation", code=found.loinc, codeSystem=LOINC_OID, codeSystemName="LOINC")
    if found.mdc:
        sub(code, "translation", code=str(found.mdc), codeSystem=MDC_OID, codeSystemName="MDC",
            displayName=found.display)
    sub(observation, "statusCode", code="completed")
    sub(observation, "effectiveTime", value=ts(obs.effective, zone))
    if part.value is not None:
        sub(observation, "value", **{XSI_TYPE: "PQ", "value": f"{part.value:f}",
                                     "unit": part.unit})
    else:
        sub(observation, "value", **{XSI_TYPE: "PQ", "nullFlavor": NULL_FLAVORS[part.absent]})
    if judged:
        sub(observation, "interpretationCode", code=INTERPRETATIONS[judged.severity][0],
            codeSystem=INTERPRETATION_OID)
    methods = []
    if obs.context.get("method") == "self-measured":
        methods.append(MEASURED_BY_CITIZEN)
    methods.append(SENT_AUTOMATICALLY if obs.driver else TYPED_BY_CITIZEN)
    for method, display in methods:
        sub(observation, "methodCode", code=method, codeSystem=MEDCOM_MESSAGE_CODES,
            codeSystemName="MedCom Message Codes", displayName=display)
    device = sub(observation, "participant", typeCode="DEV")
    role = sub(device, "participantRole", classCode="MANU")
    sub(role, "id", root=id_root("device"), extension=obs.device)
    for alarm in judged.ranges if judged else ():
        reference = sub(observation, "referenceRange", typeCode="REFV")
        observation_range = sub(reference, "observationRange", classCode="OBS",
                                moodCode="EVN.CRT")
        sub(observation_range, "code", code=alarm.code, codeSystem=MEDCOM_MESSAGE_CODES,
            codeSystemName="MedCom Message Codes", displayName=alarm.display)
        interval = sub(observation_range, "value", **{XSI_TYPE: "IVL_PQ"})
        if alarm.low is not None:
            sub(interval, "low", value=f"{alarm.low:f}", unit=found.unit)
        if alarm.high is not None:
            sub(interval, "high", value=f"{alarm.high:f}", unit=found.unit)
    return observation


def device_entry(device: str) -> ET.Element:
    """A Medical Equipment entry: telemon knows the device's id, not its make or type."""
    entry = ET.Element(tag("entry"), typeCode="COMP", contextConductionInd="true")
    organizer = sub(entry, "organizer", classCode="CLUSTER", moodCode="EVN")
    sub(organizer, "templateId", root=DEVICE_ORGANIZER)
    sub(organizer, "statusCode", code="completed")
    participant = sub(organizer, "participant", typeCode="SBJ", contextControlCode="OP")
    role = sub(participant, "participantRole", classCode="MANU")
    for root in DEVICE_ROLE:
        sub(role, "templateId", root=root)
    sub(role, "id", root=id_root("device"), extension=device)
    playing = sub(role, "playingDevice", classCode="DEV", determinerCode="INSTANCE")
    sub(playing, "code", nullFlavor="UNK")
    return entry


# --- reading an existing document back ------------------------------------------------------


class Contents(NamedTuple):
    readings: dict[str, Reading]  # by observation id
    devices: dict[str, ET.Element]  # by device id
    version: int  # of the document in its set; 0 when there is none yet


def read_document(path: Path) -> Contents:
    """The readings and devices of a document this exporter wrote; ExportError if the file
    is not one (it is never overwritten then: someone may have put it there)."""
    if not path.exists():
        return Contents({}, {}, 0)
    try:
        root = ET.parse(path).getroot()
        version = int(root.find(tag("versionNumber")).get("value"))
        readings, devices = {}, {}
        for section in root.iter(tag("section")):
            roots = {t.get("root") for t in section.findall(tag("templateId"))}
            for entry in section.findall(tag("entry")):
                organizer = entry.find(tag("organizer"))
                if EQUIPMENT_SECTION[0] in roots:
                    device = organizer.find(f"{tag('participant')}/{tag('participantRole')}/"
                                            f"{tag('id')}").get("extension")
                    devices[device] = entry
                else:
                    moment = parse_ts(organizer.find(tag("effectiveTime")).get("value"))
                    readings[organizer.find(tag("id")).get("extension")] = Reading(
                        moment, VITAL_SIGNS_SECTION[0] in roots, entry)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise ExportError(f"{path}: cannot add readings to it, it is not a PHMR document "
                          f"written by telemon ({type(exc).__name__}: {exc})") from None
    return Contents(readings, devices, version)


# --- the document ---------------------------------------------------------------------------


def narrative(section: ET.Element, readings: list[Reading], empty: str) -> None:
    """The section's human-readable table: each value with its unit and local time."""
    text = sub(section, "text")
    if not readings:
        text.text = empty
        return
    table = sub(text, "table", width="100%")
    header = sub(sub(table, "thead"), "tr")
    for title in ("Måling", "Tidspunkt", "Værdi"):
        sub(header, "th", title)
    body = sub(table, "tbody")
    for reading in readings:
        organizer = reading.entry.find(tag("organizer"))
        local = parse_ts(organizer.find(tag("effectiveTime")).get("value"))
        for observation in organizer.iter(tag("observation")):
            value = observation.find(tag("value"))
            shown = (f"{value.get('value')} {value.get('unit')}" if value.get("value")
                     else f"ingen værdi ({value.get('nullFlavor')})")
            row = sub(body, "tr")
            sub(row, "td", observation.find(f"{tag('code')}/{tag('originalText')}").text)
            sub(row, "td", local.strftime("%Y-%m-%d %H:%M"))
            sub(row, "td", shown)


def section(body: ET.Element, templates: tuple[str, ...], code: str, title: str,
            readings: list[Reading], empty: str) -> ET.Element:
    component = sub(body, "component", typeCode="COMP", contextConductionInd="true")
    element = sub(component, "section", classCode="DOCSECT", moodCode="EVN")
    for root in templates:
        sub(element, "templateId", root=root)
    sub(element, "code", code=code, codeSystem=LOINC_OID, codeSystemName="LOINC")
    sub(element, "title", title)
    narrative(element, readings, empty)
    for reading in readings:
        element.append(reading.entry)
    return element


def organisation_id(parent: ET.Element, custodian_sor: str | None) -> None:
    if custodian_sor:
        sub(parent, "id", root=SOR_OID, extension=custodian_sor, assigningAuthorityName="SOR")
    else:
        sub(parent, "id", nullFlavor="NI")


def document(patient: str, period: str, contents: Contents, zone: ZoneInfo,
             custodian_sor: str | None, now: datetime) -> ET.Element:
    """The whole document; header children in the order of the CDA R2 schema."""
    readings = sorted(contents.readings.values(), key=lambda r: r.moment)
    set_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:telemon:phmr:{patient}:{period}"))
    root = ET.Element(tag("ClinicalDocument"), classCode="DOCCLIN", moodCode="EVN")
    sub(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    sub(root, "templateId", root=PHMR_TEMPLATE)
    sub(root, "templateId", root=DANISH_PHMR_TEMPLATE)
    sub(root, "id", root=str(uuid.uuid5(uuid.UUID(set_id), str(contents.version))))
    sub(root, "code", code="53576-5", codeSystem=LOINC_OID, codeSystemName="LOINC",
        displayName="Personal Health Monitoring Report")
    sub(root, "title", f"Hjemmemonitorering for {patient}, {period}")
    sub(root, "effectiveTime", value=ts(now, zone))
    sub(root, "confidentialityCode", code="N", codeSystem="2.16.840.1.113883.5.25")
    sub(root, "languageCode", code="da-DK")
    sub(root, "setId", root=set_id)
    sub(root, "versionNumber", value=str(contents.version))
    target = sub(root, "recordTarget", typeCode="RCT", contextControlCode="OP")
    patient_role = sub(target, "patientRole", classCode="PAT")
    sub(patient_role, "id", root=id_root("patient"), extension=patient,
        assigningAuthorityName="telemon")
    author = sub(root, "author", typeCode="AUT", contextControlCode="OP")
    sub(author, "time", value=ts(now, zone))
    assigned = sub(author, "assignedAuthor", classCode="ASSIGNED")
    organisation_id(assigned, custodian_sor)
    device = sub(assigned, "assignedAuthoringDevice", classCode="DEV",
                 determinerCode="INSTANCE")
    sub(device, "softwareName", f"telemon {__version__}")
    custodian = sub(sub(root, "custodian", typeCode="CST"), "assignedCustodian",
                    classCode="ASSIGNED")
    organisation = sub(custodian, "representedCustodianOrganization", classCode="ORG",
                       determinerCode="INSTANCE")
    organisation_id(organisation, custodian_sor)
    monitoring = sub(sub(root, "documentationOf", typeCode="DOC"), "serviceEvent",
                     classCode="MPROT", moodCode="EVN")
    span = sub(monitoring, "effectiveTime")
    sub(span, "low", value=ts(readings[0].moment, zone))
    sub(span, "high", value=ts(readings[-1].moment, zone))
    profile = sub(sub(root, "documentationOf", typeCode="DOC"), "serviceEvent")
    sub(profile, "templateId", root=PROFILE_VERSION_TEMPLATE[0],
        extension=PROFILE_VERSION_TEMPLATE[1])
    sub(profile, "id", root=PROFILE_VERSION_ID[0], extension=PROFILE_VERSION_ID[1],
        assigningAuthorityName="MedCom")
    danish_oids = {oid for oid, _ in (CODE_SYSTEMS[NPU], CODE_SYSTEMS[MCS])}
    used = sorted({(t.get("codeSystem"), t.get("code")) for r in readings
                   for t in r.entry.iter(tag("translation")) if t.get("codeSystem") in danish_oids})
    for system, code in used:
        event = sub(sub(root, "documentationOf", typeCode="DOC"), "serviceEvent",
                    classCode="MPROT", moodCode="EVN")
        sub(event, "code", code=code, codeSystem=system)
    body = sub(sub(root, "component", typeCode="COMP", contextConductionInd="true"),
               "structuredBody", classCode="DOCBODY", moodCode="EVN")
    section(body, VITAL_SIGNS_SECTION, "8716-3", "Vital Signs",
            [r for r in readings if r.vital_sign], "Ingen vitale værdier")
    section(body, RESULTS_SECTION, "30954-2", "Results",
            [r for r in readings if not r.vital_sign], "Ingen resultater")
    equipment = section(body, EQUIPMENT_SECTION, "46264-8", "Medical Equipment", [],
                        "Ingen udstyr")
    if contents.devices:
        equipment.find(tag("text")).text = "Måleudstyr: " + ", ".join(sorted(contents.devices))
    for device_id in sorted(contents.devices):
        equipment.append(contents.devices[device_id])
    return root


# --- the target -----------------------------------------------------------------------------


class PhmrTarget:
    def __init__(self, directory: Path, period: str, zone: ZoneInfo,
                 custodian_sor: str | None) -> None:
        self.directory = directory
        self.period = period
        self.zone = zone
        self.custodian_sor = custodian_sor

    def deliver(self, records: Sequence[Record]) -> None:
        assessed = assessments(records)
        by_document: dict[tuple[str, str], list[Observation]] = defaultdict(list)
        for record in records:
            if isinstance(record, Observation):
                key = (record.patient, period_of(record.effective, self.period, self.zone))
                by_document[key].append(record)
        for (patient, period), observations in by_document.items():
            self._merge(patient, period, observations, assessed)

    def _merge(self, patient: str, period: str, observations: list[Observation],
               assessed: Mapping[str, Mapping[str, PartAssessment]]) -> None:
        path = self.directory / patient / f"{period}.xml"
        contents = read_document(path)
        added = False
        for obs in observations:
            if obs.id in contents.readings:
                continue  # already in the document: a repeated batch
            reading = reading_entry(obs, assessed.get(obs.id, {}), self.zone)
            if reading is None:
                continue  # no Danish code: not admitted by the profile
            contents.readings[obs.id] = reading
            contents.devices.setdefault(obs.device, device_entry(obs.device))
            added = True
        if not added:
            return
        contents = contents._replace(version=contents.version + 1)
        root = document(patient, period, contents, self.zone, self.custodian_sor,
                        datetime.now(UTC))
        ET.indent(root)
        write_atomically(path, ET.tostring(root, encoding="UTF-8", xml_declaration=True))

    def close(self) -> None:
        pass


def open_target(options: Mapping[str, Any]) -> PhmrTarget:
    if not options.get("directory"):
        raise ValueError("the phmr exporter needs `directory`, the folder to write to")
    period = options.get("period", "day")
    if period not in PERIODS:
        raise ValueError(f'period must be "day" or "week", got {period!r}')
    try:
        zone = ZoneInfo(options.get("timezone", "Europe/Copenhagen"))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone must be an IANA time zone name such as "
                         f'"Europe/Copenhagen", got {options.get("timezone")!r}') from None
    return PhmrTarget(Path(options["directory"]), period, zone, options.get("custodian_sor"))


EXPORTER = Exporter(
    name="phmr",
    version=__version__,
    description="Danish PHMR (HL7 CDA R2, MedCom PHMR-DK 1.3) documents per patient and period",
    open=open_target,
    options={
        "directory": Option("str", "folder the documents are written to", required=True),
        "period": Option("str", 'one document per "day" or per ISO "week"', default="day"),
        "timezone": Option("str", "IANA zone whose days and weeks the periods are",
                           default="Europe/Copenhagen"),
        "custodian_sor": Option("str", "SOR code of the organisation keeping the documents"),
    },
    # MedCom's PHMR is a document sent to a clinician outside the organisation; telemon's
    # choice of receiver is the citizen's GP, so it needs that consent (a hospital receiver
    # would need "share-hospital": docs/roles-and-consent.md)
    purpose="share-gp",
)


@hookimpl
def register_exporters(register):
    register(EXPORTER)
