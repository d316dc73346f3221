"""ops/k8s: core objects validated with kubernetes-validate, KEDA's ScaledObject with a schema of ours.

kubernetes-validate ships schemas for built-in kinds only; a CRD such as KEDA's ScaledObject raises
SchemaNotFoundError there, so it is checked against tests/schemas/keda-scaledobject.schema.json, written
from KEDA's ScaledObject and redis-scaler documentation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.compose_local import ROOT
from worker.settings import Settings, unknown_variables

K8S = ROOT / "ops" / "k8s"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject.schema.json"
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests promise to work on


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in documents() if d["kind"] == kind]
    return doc


def keda_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_manifest_validates() -> None:
    kinds = []
    for name, doc in documents():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            errors = [e.message for e in keda_validator().iter_errors(doc)]
            assert errors == [], (name, errors)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"Deployment", "StatefulSet", "Service", "ScaledObject"} <= set(kinds)


def test_validation_catches_mistakes() -> None:
    deployment = copy.deepcopy(find("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    scaled = copy.deepcopy(find("ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 4  # KEDA metadata is a map of strings
    assert list(keda_validator().iter_errors(scaled))


def worker_container() -> dict[str, Any]:
    return find("Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_worker_probes_resources_and_graceful_termination() -> None:
    spec = find("Deployment")["spec"]["template"]["spec"]
    c = worker_container()
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert unknown_variables(env) == []
    port = int(env["FETCHFLEET_METRICS_PORT"])
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and named[get["port"]] == port
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    grace = float(env.get("FETCHFLEET_DRAIN_GRACE") or Settings.model_fields["drain_grace"].default)
    assert grace + 5 <= spec["terminationGracePeriodSeconds"] <= grace + 30
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["args"] == ["worker"]


def test_keda_scales_the_worker_on_the_queue() -> None:
    scaled = find("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == find("Deployment")["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    env = {e["name"]: e.get("value") for e in worker_container()["env"]}
    queue = env.get("FETCHFLEET_QUEUE_NAME") or Settings.model_fields["queue_name"].default
    assert trigger["metadata"]["listName"] == queue
    redis_url = env["FETCHFLEET_REDIS_URL"]
    assert trigger["metadata"]["address"] == redis_url.split("://", 1)[1].split("/", 1)[0]
    service = next(d for _, d in documents() if d["kind"] == "Service" and d["metadata"]["name"] == "redis")
    assert trigger["metadata"]["address"].startswith(
        f"{service['metadata']['name']}.{service['metadata']['namespace']}."
    )


def test_redis_is_persistent() -> None:
    redis = find("StatefulSet")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
