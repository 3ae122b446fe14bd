"""The FHIR exporter: every resource parsed by fhir.resources (R4B models), checked against the
Danish eHealth profiles and value sets in shared/data, written to files and POSTed to a real
HTTP server."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import SHARED_DATA

from telemon import store
from telemon.codes import KNOWN
from telemon.export import ExportError, cursor_positions, export_one
from telemon.models import (
    AbsentReason,
    Answer,
    Component,
    ConsentEvent,
    Evaluation,
    LimitSet,
    Observation,
    QuestionnaireResponse,
)
from telemon.plugins.exporters.fhir import EXPORTER, bundles, open_target

fhir_models = pytest.importorskip("fhir.resources.R4B", reason="fhir.resources is a test "
                                  "dependency: pip install fhir.resources")
from fhir.resources.R4B.bundle import Bundle  # noqa: E402
from fhir.resources.R4B.observation import Observation as FhirObservation  # noqa: E402
from fhir.resources.R4B.questionnaireresponse import (  # noqa: E402
    QuestionnaireResponse as FhirQuestionnaireResponse,
)

IG = SHARED_DATA / "fhir-dk-ehealth"
needs_ig = pytest.mark.skipif(not IG.is_dir(), reason=f"eHealth IG reference files absent: {IG}")
EHEALTH = "http://ehealth.sundhed.dk/fhir/StructureDefinition/"
T0 = datetime(2026, 3, 1, 6, 45, 12, tzinfo=UTC)


def reading(key: str, n: int = 0, patient: str = "p-0001", **changes) -> Observation:
    measure = KNOWN[key]
    fields = dict(id=f"{key}-{n}", patient=patient, device=f"dev-{key}", gateway="gw-0001",
                  code=measure.code, unit=measure.unit, effective=T0 + timedelta(minutes=n),
                  value=Decimal(50), driver="ble_test", driver_version="1.0",
                  context={"method": "self-measured"}, received=T0 + timedelta(minutes=n + 1))
    return Observation(**(fields | changes))


BP = reading("bp", value=None, components=(
    Component(code=KNOWN["bp_sys"].code, unit="mm[Hg]", value=Decimal("151.0")),
    Component(code=KNOWN["bp_dia"].code, unit="mm[Hg]", value=Decimal(80)),
    Component(code=KNOWN["bp_mean"].code, unit="mm[Hg]", absent=AbsentReason.ERROR)),
    flags=("irregular-pulse",))
SPO2 = reading("spo2", value=Decimal(89))
WEIGHT = reading("weight", value=Decimal("72.40"))
PULSE_NAN = reading("pulse", value=None, absent=AbsentReason.NOT_A_NUMBER)
TEMPERATURE = reading("temperature", value=Decimal("37.2"))
QR = QuestionnaireResponse(id="qr-1", patient="p-0001", gateway="gw-0001", questionnaire="cat",
                           version="2", authored=T0,
                           answers=(Answer("q1", 3), Answer("q2", True), Answer("q3", "often"),
                                    Answer("q4", 1.5)),
                           scores={"total": Decimal("14.0")})
SPO2_LIMITS = LimitSet(red_low=Decimal(88), yellow_low=Decimal(92))
SYSTOLIC_LIMITS = LimitSet(red_low=Decimal(90), yellow_low=Decimal(100),
                           yellow_high=Decimal(140), red_high=Decimal(160))


def evaluation(obs: Observation, code: str, severity: str, limits: LimitSet,
               module: str = "copd") -> Evaluation:
    return Evaluation(observation=obs.id, patient=obs.patient, module=module, code=code,
                      severity=severity, limits=limits, limits_source="patient v2", evaluated=T0)


BATCH = [BP, evaluation(BP, "bp_sys", "yellow", SYSTOLIC_LIMITS),
         evaluation(BP, "bp_dia", "green", LimitSet(red_high=Decimal(110))),
         SPO2, evaluation(SPO2, "spo2", "yellow", SPO2_LIMITS),
         evaluation(SPO2, "spo2", "yellow", SPO2_LIMITS, module="heart_failure"),
         WEIGHT, PULSE_NAN, TEMPERATURE, QR]


def produced(records=BATCH) -> dict[str, dict]:
    """The Bundles as a FHIR client would receive them: JSON text, parsed back."""
    from telemon.plugins.exporters.fhir import _json

    return {name: json.loads(_json.encode(bundle)) for name, bundle in bundles(records).items()}


def resources(kind: str, records=BATCH) -> dict[str, dict]:
    """The resources of one type, by the record id in their identifier."""
    found = {}
    for bundle in produced(records).values():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == kind:
                identifier = resource["identifier"]
                value = identifier[0]["value"] if isinstance(identifier, list) else identifier[
                    "value"]
                found[value] = resource
    return found


def codings(concept: dict) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


# --- an established model library parses everything ----------------------------------------


def test_every_bundle_and_resource_parses_as_fhir_r4():
    bundles_out = produced()
    assert len(bundles_out) == 1  # one patient
    for bundle in bundles_out.values():
        parsed = Bundle.model_validate(bundle)
        assert parsed.type == "transaction"
        for entry in bundle["entry"]:
            model = {"Observation": FhirObservation,
                     "QuestionnaireResponse": FhirQuestionnaireResponse}[
                entry["resource"]["resourceType"]]
            model.model_validate(entry["resource"])


def test_one_bundle_per_patient_each_entry_a_conditional_create():
    other = reading("spo2", n=5, patient="p-0002")
    out = produced([SPO2, other, WEIGHT])
    assert set(out) == {"p-0001/bundle-spo2-0.json", "p-0002/bundle-spo2-5.json"}
    for name, bundle in out.items():
        patient = name.split("/")[0]
        for entry in bundle["entry"]:
            resource = entry["resource"]
            # $submit-measurement: every resource of a Bundle refers to the same Patient
            assert resource["subject"]["identifier"]["value"] == patient
            assert entry["request"] == {"method": "POST", "url": "Observation",
                                        "ifNoneExist": "identifier="
                                                       + resource["identifier"][0]["value"]}
            assert entry["fullUrl"].startswith("urn:uuid:")
        assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])


# --- the Danish eHealth profiles (shared/data/fhir-dk-ehealth) ------------------------------


def required_by_profile(fsh_file: str) -> tuple[set[str], set[str]]:
    """The elements a FSH profile makes 1..1, and the extension URLs it makes 1..1 (the
    rules of the file's first declaration, the Profile; an Extension may follow it)."""
    elements, extensions = set(), set()
    lines = (IG / fsh_file).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Profile:")
    for line in lines[1:]:
        if re.match(r"(Profile|Extension|ValueSet|CodeSystem|Instance):", line):
            break
        if match := re.fullmatch(r"\* extension contains (\S+) named \S+ 1\.\.1", line.strip()):
            url = match[1]
            extensions.add(url if "://" in url else EHEALTH + url)
        elif match := re.fullmatch(r"\* (\S+) 1\.\.1", line.strip()):
            elements.add(match[1])
    return elements, extensions


def has_element(resource: dict, element: str) -> bool:
    if element.endswith("[x]"):
        return any(key.startswith(element[:-3]) for key in resource)
    return element in resource


@needs_ig
def test_observations_carry_what_ehealth_observation_requires():
    elements, extensions = required_by_profile("ehealth-observation.fsh")
    assert {"basedOn", "subject", "effective[x]", "performer"} <= elements  # read as meant
    assert len(extensions) == 2
    for resource in resources("Observation").values():
        assert resource["meta"]["profile"] == [EHEALTH + "ehealth-observation"]
        assert resource["status"] == "final"  # $submit-measurement
        for element in elements:
            assert has_element(resource, element), element
        urls = [e["url"] for e in resource["extension"]]
        for url in extensions:
            assert urls.count(url) == 1, url
        timing = next(e for e in resource["extension"] if e["url"].endswith("resolved-timing"))
        assert {e["url"] for e in timing["extension"]} == {"serviceRequestVersionId", "type"}


@needs_ig
def test_questionnaire_responses_carry_what_the_profile_requires():
    elements, extensions = required_by_profile("ehealth-questionnaireresponse.fsh")
    assert {"basedOn", "questionnaire", "subject", "authored", "source"} <= elements
    [resource] = resources("QuestionnaireResponse").values()
    assert resource["status"] == "completed"
    for element in elements:
        assert has_element(resource, element), element
    assert sorted(e["url"] for e in resource["extension"]) == sorted(extensions)
    assert resource["questionnaire"].endswith(":cat|2")
    assert resource["item"] == [
        {"linkId": "q1", "answer": [{"valueInteger": 3}]},
        {"linkId": "q2", "answer": [{"valueBoolean": True}]},
        {"linkId": "q3", "answer": [{"valueString": "often"}]},
        {"linkId": "q4", "answer": [{"valueDecimal": 1.5}]},
        {"linkId": "score:total", "answer": [{"valueDecimal": 14.0}]},
    ]


def value_set(file: str) -> set[tuple[str, str]]:
    data = json.loads((IG / file).read_text(encoding="utf-8"))
    return {(include["system"], concept["code"]) for include in data["compose"]["include"]
            for concept in include.get("concept", ())}


@needs_ig
@pytest.mark.parametrize("record", [SPO2, WEIGHT, PULSE_NAN, TEMPERATURE], ids=lambda r: r.id)
def test_danish_codes_are_from_the_observation_code_value_set(record):
    observation_codes = value_set("ValueSet-ehealth-observation-codes.json")
    resource = resources("Observation", [record])[record.id]
    danish = {c for c in codings(resource["code"]) if c[0].startswith("urn:oid:1.2.208.")}
    assert danish == {KNOWN[record.id.split("-")[0]].ehealth_code}
    assert danish <= observation_codes
    assert ("http://loinc.org", KNOWN[record.id.split("-")[0]].loinc) in codings(resource["code"])
    assert (record.code.system, record.code.code) in codings(resource["code"])


@needs_ig
def test_blood_pressure_component_codes_are_from_the_observation_code_value_set():
    observation_codes = value_set("ValueSet-ehealth-observation-codes.json")
    resource = resources("Observation", [BP])[BP.id]
    for component in resource["component"][:2]:
        assert codings(component["code"]) & observation_codes


@needs_ig
def test_units_are_ucum_as_the_code_to_unit_concept_map_says():
    concept_map = json.loads((IG / "ConceptMap-ehealth.sundhed.dk-ConceptMap-conceptmap-obs-"
                                   "code-to-ucum.json").read_text(encoding="utf-8"))
    unit_of = {(group["source"], element["code"]): element["target"][0]["code"]
               for group in concept_map["group"] for element in group["element"]}

    def ucum(unit: str) -> str:  # UCUM: a leading solidus is unary, "/min" is "1/min"
        return "1" + unit if unit.startswith("/") else unit

    checked = 0
    for resource in resources("Observation").values():
        quantity = resource.get("valueQuantity")
        danish = [c for c in codings(resource["code"]) if c in unit_of]
        if quantity and danish:
            assert quantity["system"] == "http://unitsofmeasure.org"
            assert ucum(quantity["code"]) == unit_of[danish[0]]
            checked += 1
    assert checked == 3  # SpO2, weight, temperature


@needs_ig
def test_the_method_is_from_the_ehealth_observation_method_code_system():
    system = json.loads((IG / "CodeSystem-ehealth-observation-method.json").read_text("utf-8"))
    allowed = {(system["url"], concept["code"]) for concept in system["concept"]}
    for resource in resources("Observation").values():
        assert codings(resource["method"]) <= allowed


# --- values, ranges and the PHD IG ----------------------------------------------------------


def test_the_device_precision_is_kept_in_the_json_text():
    [bundle] = bundles([WEIGHT]).values()
    from telemon.plugins.exporters.fhir import _json

    assert b'"value":72.40' in _json.encode(bundle)


def test_a_special_value_is_a_data_absent_reason_without_a_value():
    resource = resources("Observation", [PULSE_NAN])[PULSE_NAN.id]
    assert "valueQuantity" not in resource
    assert resource["dataAbsentReason"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
         "code": "not-a-number"}]


def test_blood_pressure_is_components_with_their_own_values_and_ranges():
    resource = resources("Observation", [*BATCH])[BP.id]
    assert "valueQuantity" not in resource
    systolic, diastolic, mean = resource["component"]
    assert systolic["valueQuantity"] == {"value": 151.0, "unit": "mm[Hg]",
                                         "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    assert ("http://loinc.org", "8480-6") in codings(systolic["code"])
    assert systolic["interpretation"][0]["coding"][0]["code"] == "A"
    assert diastolic["interpretation"][0]["coding"][0]["code"] == "N"
    assert mean["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert resource["interpretation"][0]["coding"][0]["code"] == "A"  # the worst part
    assert resource["note"] == [{"text": "device status: irregular-pulse"}]
    systolic_ranges = [r for r in resource["referenceRange"]
                       if (f"urn:oid:{KNOWN['bp_sys'].ehealth_code[0][8:]}",
                           KNOWN["bp_sys"].ehealth_code[1]) in codings(r["type"])]
    assert [(r["type"]["coding"][0]["code"], r.get("low", {}).get("value"),
             r.get("high", {}).get("value")) for r in systolic_ranges] == [
        ("RAL", None, 90), ("GAL", 90, 100), ("GAL", 140, 160), ("RAL", 160, None)]


def test_the_limits_in_force_are_the_reference_ranges_once_per_distinct_limit_set():
    resource = resources("Observation")[SPO2.id]
    medcom = "urn:oid:1.2.208.184.100.1"  # MedCom message codes: RAL red, GAL yellow
    assert resource["referenceRange"] == [
        {"high": {"value": 88, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
         "type": {"coding": [{"system": medcom, "code": "RAL",
                              "display": "Terapeutiske grænseværdier for RØD alarm"}]}},
        {"low": {"value": 88, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
         "high": {"value": 92, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
         "type": {"coding": [{"system": medcom, "code": "GAL",
                              "display": "Terapeutiske grænseværdier for GUL alarm"}]}},
    ]
    assert resource["interpretation"][0]["coding"][0]["code"] == "A"
    assert "referenceRange" not in resources("Observation")[WEIGHT.id]  # none evaluated


def test_device_gateway_times_and_identifier_follow_the_phd_ig():
    resource = resources("Observation")[SPO2.id]
    assert resource["identifier"] == [{"value": SPO2.id}]
    assert resource["device"]["identifier"]["value"] == SPO2.device
    [gateway] = [e for e in resource["extension"]
                 if e["url"] == "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"]
    assert gateway["valueReference"]["identifier"]["value"] == "gw-0001"
    assert datetime.fromisoformat(resource["effectiveDateTime"]) == SPO2.effective
    assert datetime.fromisoformat(resource["issued"]) == SPO2.received
    categories = {c for category in resource["category"] for c in codings(category)}
    assert ("http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
            "phd-observation") in categories
    assert ("http://terminology.hl7.org/CodeSystem/observation-category",
            "vital-signs") in categories


# --- files ----------------------------------------------------------------------------------


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_files_are_rewritten_identically_when_a_batch_is_repeated(tmp_path):
    target = open_target({"directory": str(tmp_path)})
    target.deliver(BATCH)
    first = files(tmp_path)
    assert list(first) == ["p-0001/bundle-bp-0.json"]
    target.deliver(BATCH)
    assert files(tmp_path) == first
    Bundle.model_validate_json(first["p-0001/bundle-bp-0.json"])


# --- a FHIR server --------------------------------------------------------------------------


class FhirServer(ThreadingHTTPServer):
    """A FHIR server on 127.0.0.1 that takes transactions and honours ifNoneExist on the
    identifier (as HAPI does), recording each request; `status` forces an error answer."""

    def __init__(self, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), FhirHandler)
        self.status = status
        self.requests: list[tuple[str, str, dict]] = []
        self.stored: dict[str, dict] = {}  # by identifier

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


class FhirHandler(BaseHTTPRequestHandler):
    server: FhirServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, self.headers["Content-Type"], body))
        if self.server.status != 200:
            self.answer(self.server.status, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "exception", "diagnostics": "database down"}]})
            return
        responses = []
        for entry in body["entry"]:
            identifier = entry["request"]["ifNoneExist"].removeprefix("identifier=")
            created = identifier not in self.server.stored
            self.server.stored.setdefault(identifier, entry["resource"])
            responses.append({"response": {"status": "201 Created" if created else "200 OK"}})
        self.answer(200, {"resourceType": "Bundle", "type": "transaction-response",
                          "entry": responses})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(request):
    instance = FhirServer(getattr(request, "param", 200))
    thread = threading.Thread(target=instance.serve_forever, daemon=True)
    thread.start()
    yield instance
    instance.shutdown()
    instance.server_close()


def test_bundles_are_posted_as_transactions_and_the_server_keeps_each_once(server, tmp_path):
    target = open_target({"url": server.url, "directory": str(tmp_path)})
    target.deliver(BATCH)
    target.deliver(BATCH)  # at least once: the same batch again
    assert len(server.requests) == 2
    (path, content_type, first), (_, _, second) = server.requests
    assert (path, content_type) == ("/fhir", "application/fhir+json")
    assert first == second
    Bundle.model_validate(first)
    record_ids = [BP.id, SPO2.id, WEIGHT.id, PULSE_NAN.id, TEMPERATURE.id, QR.id]
    assert [e["request"]["ifNoneExist"] for e in first["entry"]] == [
        f"identifier={i}" for i in record_ids]
    assert sorted(server.stored) == sorted(record_ids)  # six resources, not twelve
    assert files(tmp_path)  # and the files as well


@pytest.mark.parametrize("server", [500], indirect=True)
def test_a_server_error_fails_the_batch_and_the_cursor_stays(server, tmp_path):
    with pytest.raises(ExportError, match=r"refused the transaction: HTTP 500 .*database down"):
        open_target({"url": server.url}).deliver([SPO2])

    db = store.open_database(store.central_database_path(tmp_path / "central"))
    store.store_observations(db, [SPO2])
    consent_to_national_export(db)
    result = export_one(db, EXPORTER, {"url": server.url})
    assert result.delivered == 0 and "HTTP 500" in result.error
    assert cursor_positions(db, "fhir")["observations"] == 0


def test_an_unreachable_server_fails_the_batch_with_the_reason():
    probe = FhirServer()
    url = probe.url
    probe.server_close()  # nothing listens there now
    with pytest.raises(ExportError, match=f"cannot reach {re.escape(url)}"):
        open_target({"url": url, "timeout": 5.0}).deliver([SPO2])


# --- through the runner, from the database --------------------------------------------------


def consent_to_national_export(db) -> None:
    """The runner hands FHIR only the records of patients consenting to national export."""
    store.store_record(db, ConsentEvent(id="consent-1", patient="p-0001",
                                        purpose="national-export", granted=True,
                                        at=datetime(2026, 1, 1, tzinfo=UTC),
                                        recorded_by="Test Nurse"))


def test_the_runner_exports_stored_observations_with_their_stored_limits(tmp_path):
    db = store.open_database(store.central_database_path(tmp_path / "central"))
    store.store_observations(db, [SPO2, WEIGHT])
    store.store_record(db, QR)
    store.store_evaluations(db, [evaluation(SPO2, "spo2", "yellow", SPO2_LIMITS)])
    consent_to_national_export(db)
    out = tmp_path / "fhir"
    result = export_one(db, EXPORTER, {"directory": str(out)})
    assert (result.delivered, result.error) == (3, None)
    written = files(out)
    assert sorted(written) == ["p-0001/bundle-qr-1.json", "p-0001/bundle-spo2-0.json"]
    bundle = Bundle.model_validate_json(written["p-0001/bundle-spo2-0.json"])
    spo2 = bundle.entry[0].resource
    assert [(r.type.coding[0].code, r.low and r.low.value, r.high.value)
            for r in spo2.referenceRange] == [("RAL", None, 88), ("GAL", 88, 92)]


# --- options --------------------------------------------------------------------------------


def test_the_declaration_is_valid():
    assert EXPORTER.problems() == []


@pytest.mark.parametrize("options, message", [
    ({}, "needs `directory` .* or `url`"),
    ({"url": "ftp://fhir.example"}, "url must be an http:// or https:// FHIR base URL"),
    ({"url": "https://"}, "url must be an http:// or https:// FHIR base URL"),
    ({"directory": "x", "timeout": 0.0}, "timeout must be a number of seconds above 0"),
])
def test_bad_options_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message):
        open_target(options)
