"""FHIR R4 export shaped like the Danish national telemedicine infrastructure's measurements.

Each batch becomes one Bundle per patient, as the infrastructure's `$submit-measurement`
operation takes them (eHealth Infrastructure IG 8.0.0, OperationDefinition
submit-measurement: Observations and QuestionnaireResponses of one Patient and
EpisodeOfCare, status final / completed). Observations follow the `ehealth-observation`
profile and the HL7 Personal Health Device IG (PhdBaseObservation): the code in NPU / MedCom
MCS where telemon.codes has one, plus LOINC and IEEE 11073 MDC; UCUM quantities with the
device's precision; a blood pressure as components; special values as dataAbsentReason; the
device reference and the gateway-device extension; the PHD identifier (the observation id)
for conditional create; the patient's alarm ranges in force (telemon.export.alarm_ranges).
QuestionnaireResponses follow `ehealth-questionnaireresponse`, with the scores as items.

References to the Patient, EpisodeOfCare, ServiceRequest and Device are logical (by
telemon's pseudonymous identifiers, telemon.export.id_system): telemon does not know the
national server's ids, and holds no CPR number.

Targets: `directory` writes each Bundle to `<directory>/<patient>/bundle-<first id>.json`
(a repeated batch rewrites the same file with the same content); `url` POSTs it to a FHIR
server as a transaction whose entries are conditional creates (`ifNoneExist` on the
identifier), so the server keeps each resource once however often it is sent.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from telemon import __version__
from telemon.codes import lookup
from telemon.export import (
    INTERPRETATIONS,
    MEDCOM_MESSAGE_CODES,
    AlarmRange,
    ExportError,
    PartAssessment,
    assessments,
    id_system,
    is_vital_sign,
    observation_parts,
)
from telemon.exporters import Exporter, Option
from telemon.files import write_atomically
from telemon.hookspecs import hookimpl
from telemon.models import Code, Observation, QuestionnaireResponse, Record, Triage

EHEALTH = "http://ehealth.sundhed.dk/fhir/StructureDefinition/"
OBSERVATION_PROFILE = EHEALTH + "ehealth-observation"
QUESTIONNAIRE_RESPONSE_PROFILE = EHEALTH + "ehealth-questionnaireresponse"
RESOLVED_TIMING = EHEALTH + "ehealth-resolved-timing"
EPISODE_OF_CARE = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare"
GATEWAY_DEVICE = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
UCUM = "http://unitsofmeasure.org"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PHD_CATEGORY = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
OBSERVATION_METHOD = "http://ehealth.sundhed.dk/cs/observation-method"
RESOLVED_TIMING_TYPE = "http://ehealth.sundhed.dk/cs/resolved-timing-type"

_json = msgspec.json.Encoder(decimal_format="number")  # 2.0 stays 2.0


# --- resources ------------------------------------------------------------------------------


def logical(resource_type: str, kind: str, value: str) -> dict[str, Any]:
    """A reference by identifier to a resource telemon does not hold."""
    return {"type": resource_type, "identifier": {"system": id_system(kind), "value": value}}


def common_extensions(patient: str) -> list[dict[str, Any]]:
    """The extensions both eHealth profiles require (1..1 each)."""
    return [
        {"url": EPISODE_OF_CARE, "valueReference": logical("EpisodeOfCare", "enrolment", patient)},
        # telemon does not resolve a measurement to a slot of the measuring schedule when it
        # exports: "Unresolved" says so. It keeps no ServiceRequest versions: always "1".
        {"url": RESOLVED_TIMING, "extension": [
            {"url": "serviceRequestVersionId", "valueId": "1"},
            {"url": "type", "valueCodeableConcept": {"coding": [
                {"system": RESOLVED_TIMING_TYPE, "code": "Unresolved"}]}},
        ]},
    ]


def codeable(code: Code) -> dict[str, Any]:
    """The eHealth infrastructure's code (NPU / MCS) where telemon knows one, then LOINC,
    then the canonical (MDC) coding the device gave."""
    found = lookup(code)
    codings = []
    if found is not None and found.ehealth_code is not None:
        system, danish = found.ehealth_code
        codings.append({"system": system, "code": danish})
    if found is not None and found.loinc is not None:
        codings.append({"system": "http://loinc.org", "code": found.loinc})
    codings.append({"system": code.system, "code": code.code,
                    **({"display": code.display} if code.display else {})})
    return {"coding": codings, "text": code.display or code.code}


def quantity(value: Decimal, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def value_fields(part) -> dict[str, Any]:
    """valueQuantity, or dataAbsentReason for a special value (PHD IG: no value[x] then)."""
    if part.value is not None:
        return {"valueQuantity": quantity(part.value, part.unit)}
    return {"dataAbsentReason": {"coding": [{"system": DATA_ABSENT_REASON,
                                             "code": str(part.absent)}]}}


def interpretation(severity: str) -> list[dict[str, Any]]:
    code, display = INTERPRETATIONS[severity]
    return [{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}]


def reference_range(alarm: AlarmRange, unit: str, part_code: Code | None) -> dict[str, Any]:
    """One alarm range; for a component its code is added to the type, as the
    infrastructure marks component ranges (eHealth IG, "Measurement Ranges")."""
    codings = [{"system": f"urn:oid:{MEDCOM_MESSAGE_CODES}", "code": alarm.code,
                "display": alarm.display}]
    if part_code is not None:
        codings.append(codeable(part_code)["coding"][0])
    return {**({"low": quantity(alarm.low, unit)} if alarm.low is not None else {}),
            **({"high": quantity(alarm.high, unit)} if alarm.high is not None else {}),
            "type": {"coding": codings}}


def observation_resource(obs: Observation,
                         assessed: Mapping[str, PartAssessment]) -> dict[str, Any]:
    top = lookup(obs.code)
    categories = [{"coding": [{"system": PHD_CATEGORY, "code": "phd-observation"}]}]
    if is_vital_sign(top):
        categories.append({"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs"}]})
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [OBSERVATION_PROFILE]},
        "extension": [
            *common_extensions(obs.patient),
            {"url": GATEWAY_DEVICE, "valueReference": logical("Device", "device", obs.gateway)},
        ],
        # PHD IG: the conditional-create identifier carries a value only; telemon's
        # observation id is already derived from device, patient, type, time and bytes.
        "identifier": [{"value": obs.id}],
        "basedOn": [logical("ServiceRequest", "measurement-plan",
                            f"{obs.patient}:{top.key if top else obs.code.code}")],
        "status": "final",
        "category": categories,
        "code": codeable(obs.code),
        "subject": logical("Patient", "patient", obs.patient),
        "effectiveDateTime": obs.effective.astimezone(UTC).isoformat(),
        # every telemon reading is taken by the citizen at home (driver context "method")
        "performer": [logical("Patient", "patient", obs.patient)],
    }
    if obs.received is not None:
        resource["issued"] = obs.received.astimezone(UTC).isoformat()
    ranges: list[dict[str, Any]] = []
    severities: list[Triage] = []
    components = []
    for found, part in observation_parts(obs):
        judged = assessed.get(found.key) if found else None
        if judged:
            severities.append(Triage[judged.severity.upper()])
            marker = part.code if obs.components else None
            ranges += [reference_range(r, found.unit, marker) for r in judged.ranges]
        if obs.components:
            component = {"code": codeable(part.code), **value_fields(part)}
            if judged:
                component["interpretation"] = interpretation(judged.severity)
            components.append(component)
    if not obs.components:
        resource.update(value_fields(obs))
    if severities:
        resource["interpretation"] = interpretation(max(severities).label)
    if obs.flags:
        resource["note"] = [{"text": "device status: " + ", ".join(obs.flags)}]
    if obs.driver:
        resource["method"] = {"coding": [{"system": OBSERVATION_METHOD, "code": "measured"}]}
    resource["device"] = logical("Device", "device", obs.device)
    if ranges:
        resource["referenceRange"] = ranges
    if components:
        resource["component"] = components
    return resource


def answer_value(value: str | int | float | bool | Decimal) -> dict[str, Any]:
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return {"valueBoolean": value}
    if isinstance(value, int):
        return {"valueInteger": value}
    if isinstance(value, float | Decimal):
        return {"valueDecimal": value}
    return {"valueString": value}


def questionnaire_response_resource(qr: QuestionnaireResponse) -> dict[str, Any]:
    items = [{"linkId": a.item, "answer": [answer_value(a.value)]} for a in qr.answers]
    items += [{"linkId": f"score:{name}", "answer": [answer_value(score)]}
              for name, score in qr.scores.items()]
    return {
        "resourceType": "QuestionnaireResponse",
        "meta": {"profile": [QUESTIONNAIRE_RESPONSE_PROFILE]},
        "extension": common_extensions(qr.patient),
        "identifier": {"value": qr.id},
        "basedOn": [logical("ServiceRequest", "measurement-plan",
                            f"{qr.patient}:{qr.questionnaire}")],
        "questionnaire": f"{id_system('questionnaire')}:{qr.questionnaire}|{qr.version}",
        "status": "completed",
        "subject": logical("Patient", "patient", qr.patient),
        "authored": qr.authored.astimezone(UTC).isoformat(),
        "author": logical("Device", "device", qr.gateway),  # the gateway recorded it
        "source": logical("Patient", "patient", qr.patient),  # the citizen answered
        "item": items,
    }


def full_url(record_id: str) -> str:
    """A stable urn:uuid for a record's entry, so a repeated batch gives the same Bundle."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, id_system('record') + ':' + record_id)}"


def bundles(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """One transaction Bundle per patient, keyed by its file name (`<patient>/bundle-<first
    record id>.json`), its entries conditional creates in the order of the records."""
    assessed = assessments(records)
    entries: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for record in records:
        if isinstance(record, Observation):
            resource = observation_resource(record, assessed.get(record.id, {}))
        elif isinstance(record, QuestionnaireResponse):
            resource = questionnaire_response_resource(record)
        else:
            continue  # evaluations travel inside observations; other records are not exported
        entries[record.patient].append((record.id, resource))
    return {
        f"{patient}/bundle-{items[0][0]}.json": {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"fullUrl": full_url(record_id), "resource": resource,
                       "request": {"method": "POST", "url": resource["resourceType"],
                                   "ifNoneExist": f"identifier={record_id}"}}
                      for record_id, resource in items],
        }
        for patient, items in entries.items()
    }


# --- the target -----------------------------------------------------------------------------


class FhirTarget:
    def __init__(self, directory: Path | None, url: str | None, timeout: float) -> None:
        self.directory = directory
        self.url = url
        self.timeout = timeout

    def deliver(self, records: Sequence[Record]) -> None:
        for name, bundle in bundles(records).items():
            body = msgspec.json.format(_json.encode(bundle), indent=2)
            if self.directory is not None:
                write_atomically(self.directory / name, body)
            if self.url is not None:
                self._post(body)

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/fhir+json",
                     "Accept": "application/fhir+json",
                     "User-Agent": f"telemon/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace").strip()
            raise ExportError(f"{self.url} refused the transaction: HTTP {exc.code} "
                              f"{exc.reason}: {detail or '(no body)'}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ExportError(f"cannot reach {self.url}: {reason}") from None

    def close(self) -> None:
        pass


def open_target(options: Mapping[str, Any]) -> FhirTarget:
    directory, url = options.get("directory"), options.get("url")
    if not directory and not url:
        raise ValueError("the fhir exporter needs `directory` (write Bundles as files) or "
                         "`url` (POST them to a FHIR server), or both")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// FHIR base URL, got {url!r}")
    timeout = float(options.get("timeout", 30.0))
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
    return FhirTarget(Path(directory) if directory else None, url, timeout)


EXPORTER = Exporter(
    name="fhir",
    version=__version__,
    description="FHIR R4 Bundles shaped like the Danish eHealth $submit-measurement, "
                "to files and/or a FHIR server",
    open=open_target,
    options={
        "directory": Option("str", "folder the Bundles are written to as JSON files"),
        "url": Option("str", "FHIR base URL each Bundle is POSTed to as a transaction"),
        "timeout": Option("float", "seconds to wait for the FHIR server", default=30.0),
    },
    # the Bundles go to the national telemedicine infrastructure, outside the organisation:
    # only for citizens who consent to national export (docs/roles-and-consent.md)
    purpose="national-export",
)


@hookimpl
def register_exporters(register):
    register(EXPORTER)
