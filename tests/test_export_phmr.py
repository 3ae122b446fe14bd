"""The Danish PHMR exporter: CDA R2 documents checked for well-formedness, namespaces, the
PHMR-DK 1.3 templates and codes, the CDA R2 element order, and codes from MedCom's PHMR
value set (shared/data). No CDA XSD ships with telemon, so the schema's element order is
checked here for the elements written."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import SHARED_DATA

from telemon import store
from telemon.codes import KNOWN
from telemon.export import ExportError, export_one, id_root
from telemon.models import (
    AbsentReason,
    Component,
    ConsentEvent,
    Evaluation,
    LimitSet,
    Observation,
)
from telemon.plugins.exporters.phmr import EXPORTER, open_target

V3 = "{urn:hl7-org:v3}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
T0 = datetime(2026, 3, 1, 6, 45, tzinfo=UTC)  # 07:45 in Copenhagen
PHMR_VALUE_SET = SHARED_DATA / "fhir-dk-ehealth" / "ValueSet-medcom-phmr-observation-vs.json"
OIDS = {"urn:oid:1.2.208.176.2.1": "1.2.208.176.2.1", "urn:oid:1.2.208.184.100.8":
        "1.2.208.184.100.8"}


def reading(key: str, n: int = 0, **changes) -> Observation:
    measure = KNOWN[key]
    fields = dict(id=f"{key}-{n}", patient="p-0001", device=f"dev-{key}", gateway="gw-0001",
                  code=measure.code, unit=measure.unit, effective=T0 + timedelta(hours=n),
                  value=Decimal(50), driver="ble_test", driver_version="1.0",
                  context={"method": "self-measured"}, received=T0)
    return Observation(**(fields | changes))


SPO2 = reading("spo2", value=Decimal(89))
WEIGHT = reading("weight", n=1, value=Decimal("72.40"))
BP = reading("bp", n=2, value=None, components=(
    Component(code=KNOWN["bp_sys"].code, unit="mm[Hg]", value=Decimal("151.0")),
    Component(code=KNOWN["bp_dia"].code, unit="mm[Hg]", value=Decimal(80)),
    Component(code=KNOWN["bp_mean"].code, unit="mm[Hg]", absent=AbsentReason.ERROR)))
SPO2_LIMITS = LimitSet(red_low=Decimal(88), yellow_low=Decimal(92))
SPO2_EVALUATION = Evaluation(observation=SPO2.id, patient="p-0001", module="copd", code="spo2",
                             severity="yellow", limits=SPO2_LIMITS, limits_source="module",
                             evaluated=T0)
BATCH = [SPO2, SPO2_EVALUATION, WEIGHT, BP]


@pytest.fixture
def written(tmp_path):
    open_target({"directory": str(tmp_path)}).deliver(BATCH)
    return tmp_path / "p-0001" / "2026-03-01.xml"


def observations(root: ET.Element) -> dict[str, ET.Element]:
    return {o.find(f"{V3}id").get("extension"): o for o in root.iter(f"{V3}observation")}


def template_ids(element: ET.Element) -> set[str]:
    return {t.get("root") for t in element.findall(f"{V3}templateId")}


def sections(root: ET.Element) -> dict[str, ET.Element]:
    return {s.find(f"{V3}code").get("code"): s for s in root.iter(f"{V3}section")}


def test_the_document_is_well_formed_cda_in_its_namespace(written):
    text = written.read_bytes()
    assert text.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<ClinicalDocument "
                           b'xmlns="urn:hl7-org:v3"')
    root = ET.fromstring(text)
    assert root.tag == f"{V3}ClinicalDocument"
    namespaces = {el.tag.split("}")[0][1:] for el in root.iter()}
    assert namespaces == {"urn:hl7-org:v3"}  # narrative included: CDA has one namespace
    assert root.find(f"{V3}typeId").attrib == {"root": "2.16.840.1.113883.1.3",
                                                "extension": "POCD_HD000040"}


def test_phmr_dk_templates_codes_and_service_events(written):
    """The PHMR-DK 1.3 conformance rules: both document templates, LOINC 53576-5, a
    monitoring (MPROT) service event with its period, one structured body."""
    root = ET.parse(written).getroot()
    assert {"2.16.840.1.113883.10.20.9", "1.2.208.184.11.1"} <= template_ids(root)
    assert root.find(f"{V3}code").attrib == {
        "code": "53576-5", "codeSystem": "2.16.840.1.113883.6.1", "codeSystemName": "LOINC",
        "displayName": "Personal Health Monitoring Report"}
    events = [d.find(f"{V3}serviceEvent") for d in root.findall(f"{V3}documentationOf")]
    monitoring = events[0]
    assert monitoring.get("classCode") == "MPROT"
    assert monitoring.find(f"{V3}effectiveTime/{V3}low").get("value") == "20260301074500+0100"
    assert monitoring.find(f"{V3}effectiveTime/{V3}high").get("value") == "20260301094500+0100"
    assert events[1].find(f"{V3}id").get("extension") == "phmr-v1.3"
    assert {e.find(f"{V3}code").get("code") for e in events[2:]} == {
        "NPU03011", "NPU03804", "MCS88019", "MCS88020"}
    assert len(root.findall(f"{V3}component/{V3}structuredBody")) == 1
    found = sections(root)
    assert set(found) == {"8716-3", "30954-2", "46264-8"}
    assert {"2.16.840.1.113883.10.20.1.16", "2.16.840.1.113883.10.20.9.2",
            "1.2.208.184.11.1"} <= template_ids(found["8716-3"])
    assert {"2.16.840.1.113883.10.20.1.14", "2.16.840.1.113883.10.20.9.14"} <= template_ids(
        found["30954-2"])
    assert {"2.16.840.1.113883.10.20.1.7", "2.16.840.1.113883.10.20.9.1"} <= template_ids(
        found["46264-8"])
    for observation in root.iter(f"{V3}observation"):
        assert {"2.16.840.1.113883.10.20.1.31", "2.16.840.1.113883.10.20.9.8"} <= template_ids(
            observation)


def test_readings_go_to_their_sections_and_devices_to_medical_equipment(written):
    found = sections(ET.parse(written).getroot())
    vital = {o.find(f"{V3}id").get("extension") for o in found["8716-3"].iter(f"{V3}organizer")}
    assert vital == {SPO2.id, BP.id, WEIGHT.id}  # all three are FHIR vital signs
    assert found["30954-2"].find(f"{V3}entry") is None
    devices = [p.find(f"{V3}id").get("extension")
               for p in found["46264-8"].iter(f"{V3}participantRole")]
    assert devices == ["dev-bp", "dev-spo2", "dev-weight"]
    rows = [[td.text for td in tr.findall(f"{V3}td")]
            for tr in found["8716-3"].iter(f"{V3}tr")][1:]
    assert rows[0] == ["SpO2", "2026-03-01 07:45", "89 %"]  # local time, with the unit


# CDA R2 schema (POCD_MT000040): the order of the children of these elements.
CLINICAL_DOCUMENT_ORDER = [
    "realmCode", "typeId", "templateId", "id", "code", "title", "effectiveTime",
    "confidentialityCode", "languageCode", "setId", "versionNumber", "copyTime",
    "recordTarget", "author", "dataEnterer", "informant", "custodian",
    "informationRecipient", "legalAuthenticator", "authenticator", "participant",
    "inFulfillmentOf", "documentationOf", "relatedDocument", "authorization", "componentOf",
    "component"]
OBSERVATION_ORDER = [
    "realmCode", "typeId", "templateId", "id", "code", "derivationExpr", "text", "statusCode",
    "effectiveTime", "priorityCode", "repeatNumber", "languageCode", "value",
    "interpretationCode", "methodCode", "targetSiteCode", "subject", "specimen", "performer",
    "author", "informant", "participant", "entryRelationship", "reference", "precondition",
    "referenceRange"]
ORGANIZER_ORDER = [
    "realmCode", "typeId", "templateId", "id", "code", "statusCode", "effectiveTime",
    "subject", "specimen", "performer", "author", "informant", "participant", "reference",
    "precondition", "component"]
REQUIRED_IN_DOCUMENT = {"typeId", "id", "code", "effectiveTime", "confidentialityCode",
                        "recordTarget", "author", "custodian", "component"}


def in_schema_order(element: ET.Element, order: list[str]) -> bool:
    names = [child.tag.removeprefix(V3) for child in element]
    return all(name in order for name in names) and names == sorted(names, key=order.index)


def test_elements_are_in_the_cda_r2_schema_order(written):
    root = ET.parse(written).getroot()
    assert in_schema_order(root, CLINICAL_DOCUMENT_ORDER)
    assert {child.tag.removeprefix(V3) for child in root} >= REQUIRED_IN_DOCUMENT
    for observation in root.iter(f"{V3}observation"):
        assert in_schema_order(observation, OBSERVATION_ORDER)
    for organizer in root.iter(f"{V3}organizer"):
        assert in_schema_order(organizer, ORGANIZER_ORDER)


@pytest.mark.skipif(not PHMR_VALUE_SET.exists(), reason=f"absent: {PHMR_VALUE_SET}")
def test_danish_codes_are_from_medcoms_phmr_value_set(written):
    data = json.loads(PHMR_VALUE_SET.read_text(encoding="utf-8"))
    allowed = {(OIDS[include["system"]], concept["code"])
               for include in data["compose"]["include"] for concept in include["concept"]}
    used = {(t.get("codeSystem"), t.get("code"))
            for t in ET.parse(written).getroot().iter(f"{V3}translation")
            if t.get("codeSystem") in OIDS.values()}
    assert len(used) == 4 and used <= allowed


def test_values_are_ucum_quantities_with_the_device_precision(written):
    found = observations(ET.parse(written).getroot())
    assert found[WEIGHT.id].find(f"{V3}value").attrib == {XSI_TYPE: "PQ", "value": "72.40",
                                                          "unit": "kg"}
    systolic = found[f"{BP.id}:bp_sys"]
    assert systolic.find(f"{V3}value").attrib == {XSI_TYPE: "PQ", "value": "151.0",
                                                  "unit": "mm[Hg]"}
    assert f"{BP.id}:bp_mean" not in found  # no Danish code: not admitted
    methods = [m.get("code") for m in systolic.findall(f"{V3}methodCode")]
    assert methods == ["POT", "AUT"]  # measured by the citizen, sent by the device
    assert all(m.get("codeSystem") == "1.2.208.184.100.1"
               for m in systolic.findall(f"{V3}methodCode"))


def test_the_limits_in_force_are_reference_ranges(written):
    spo2 = observations(ET.parse(written).getroot())[SPO2.id]
    ranges = [(r.find(f"{V3}observationRange/{V3}code").get("code"),
               r.find(f"{V3}observationRange/{V3}value").get(XSI_TYPE),
               {bound.tag.removeprefix(V3): bound.get("value")
                for bound in r.find(f"{V3}observationRange/{V3}value")})
              for r in spo2.findall(f"{V3}referenceRange")]
    assert ranges == [("RAL", "IVL_PQ", {"high": "88"}),
                      ("GAL", "IVL_PQ", {"low": "88", "high": "92"})]
    assert spo2.find(f"{V3}interpretationCode").get("code") == "A"
    weight = observations(ET.parse(written).getroot())[WEIGHT.id]
    assert weight.find(f"{V3}referenceRange") is None


def test_the_patient_is_only_a_pseudonym(written):
    root = ET.parse(written).getroot()
    role = root.find(f"{V3}recordTarget/{V3}patientRole")
    assert role.find(f"{V3}id").attrib == {"root": id_root("patient"), "extension": "p-0001",
                                           "assigningAuthorityName": "telemon"}
    assert role.find(f"{V3}patient") is None and role.find(f"{V3}addr") is None


def test_a_special_value_is_a_null_flavor(tmp_path):
    absent = reading("spo2", n=3, value=None, absent=AbsentReason.POSITIVE_INFINITY)
    open_target({"directory": str(tmp_path)}).deliver([absent])
    root = ET.parse(tmp_path / "p-0001" / "2026-03-01.xml").getroot()
    assert observations(root)[absent.id].find(f"{V3}value").attrib == {XSI_TYPE: "PQ",
                                                                       "nullFlavor": "PINF"}


# --- idempotent merging ---------------------------------------------------------------------


def test_a_repeated_batch_leaves_the_document_as_it_is(written):
    before = written.read_bytes()
    open_target({"directory": str(written.parent.parent)}).deliver(BATCH)
    assert written.read_bytes() == before
    assert [p.name for p in written.parent.iterdir()] == ["2026-03-01.xml"]  # no leftovers


def test_a_later_batch_is_merged_into_a_new_version_of_the_document(written):
    first = ET.parse(written).getroot()
    later = reading("spo2", n=5, value=Decimal(95))
    open_target({"directory": str(written.parent.parent)}).deliver([later, SPO2])
    second = ET.parse(written).getroot()
    assert sorted(observations(second)) == sorted([*observations(first), later.id])
    assert second.find(f"{V3}versionNumber").get("value") == "2"
    assert second.find(f"{V3}setId").attrib == first.find(f"{V3}setId").attrib
    assert second.find(f"{V3}id").attrib != first.find(f"{V3}id").attrib
    kept = observations(second)[SPO2.id]  # as first written, ranges and all
    assert ET.tostring(kept) == ET.tostring(observations(first)[SPO2.id])
    organizers = [o.find(f"{V3}effectiveTime").get("value")
                  for o in sections(second)["8716-3"].iter(f"{V3}organizer")]
    assert organizers == sorted(organizers)  # time order


def test_documents_are_per_local_day_or_iso_week(tmp_path):
    late = reading("spo2", n=0, effective=datetime(2026, 3, 1, 23, 30, tzinfo=UTC))
    open_target({"directory": str(tmp_path / "day")}).deliver([SPO2, late])
    assert sorted(p.name for p in (tmp_path / "day" / "p-0001").iterdir()) == [
        "2026-03-01.xml", "2026-03-02.xml"]  # 00:30 on 2 March in Copenhagen

    next_week = reading("spo2", n=1, effective=datetime(2026, 3, 2, 8, tzinfo=UTC))
    open_target({"directory": str(tmp_path / "week"), "period": "week"}).deliver(
        [SPO2, late, next_week])
    assert sorted(p.name for p in (tmp_path / "week" / "p-0001").iterdir()) == [
        "2026-W09.xml", "2026-W10.xml"]  # Sunday 1 March ends ISO week 9


def test_readings_without_a_danish_code_make_no_document(tmp_path):
    open_target({"directory": str(tmp_path)}).deliver([reading("heart_rate")])
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_our_document_is_not_overwritten(tmp_path):
    path = tmp_path / "p-0001" / "2026-03-01.xml"
    path.parent.mkdir(parents=True)
    path.write_text("<notes>kept by hand</notes>")
    with pytest.raises(ExportError, match=r"2026-03-01\.xml: cannot add readings to it"):
        open_target({"directory": str(tmp_path)}).deliver([SPO2])
    assert path.read_text() == "<notes>kept by hand</notes>"


def test_the_runner_exports_stored_readings(tmp_path):
    db = store.open_database(store.central_database_path(tmp_path / "central"))
    store.store_observations(db, [SPO2, WEIGHT])
    # the runner hands PHMR only the records of patients consenting to sharing with the GP
    store.store_record(db, ConsentEvent(id="consent-1", patient="p-0001", purpose="share-gp",
                                        granted=True, at=datetime(2026, 1, 1, tzinfo=UTC),
                                        recorded_by="Test Nurse"))
    out = tmp_path / "phmr"
    result = export_one(db, EXPORTER, {"directory": str(out), "custodian_sor": "123456789012"})
    assert (result.delivered, result.error) == (2, None)
    root = ET.parse(out / "p-0001" / "2026-03-01.xml").getroot()
    assert sorted(observations(root)) == [SPO2.id, WEIGHT.id]
    custodian = root.find(f"{V3}custodian/{V3}assignedCustodian/"
                          f"{V3}representedCustodianOrganization/{V3}id")
    assert custodian.attrib == {"root": "1.2.208.176.1.1", "extension": "123456789012",
                                "assigningAuthorityName": "SOR"}


# --- options --------------------------------------------------------------------------------


def test_the_declaration_is_valid():
    assert EXPORTER.problems() == []


@pytest.mark.parametrize("options, message", [
    ({}, "needs `directory`"),
    ({"directory": "x", "period": "month"}, 'period must be "day" or "week", got \'month\''),
    ({"directory": "x", "timezone": "Mars/Olympus"}, "timezone must be an IANA time zone"),
])
def test_bad_options_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message):
        open_target(options)
