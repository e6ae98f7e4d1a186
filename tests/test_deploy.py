"""deploy/kubernetes, checked for what can be checked without a cluster: every document parses, every setting it
sets is one trainq reads, every command is a trainq command with options it has, every probe points at a route the
service answers without a token, and KEDA scales Deployments that exist on metrics that /metrics exposes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trainq.cli import main
from trainq.settings import Settings

FOLDER = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def documents() -> list[dict]:
    out = []
    for path in sorted(FOLDER.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"] if doc["kind"] == "Deployment" else []


def test_every_document_parses_and_kustomize_lists_every_file():
    kinds = [d["kind"] for d in documents()]
    assert {"Deployment", "Service", "Secret", "PersistentVolumeClaim", "ScaledObject"} <= set(kinds), kinds
    listed = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in FOLDER.glob("*.yaml") if p.name != "kustomization.yaml")


def test_every_setting_it_sets_is_one_trainq_reads():
    known = {f"TRAINQ_{name.upper()}" for name in Settings.model_fields}
    names = set()
    for doc in documents():
        if doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {}))
        for container in containers(doc):
            for var in container.get("env", []):
                names.add(var["name"])
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["key"])
    assert names and names <= known, sorted(names - known)


def test_every_command_is_a_trainq_command_with_options_it_has():
    for doc in documents():
        for container in containers(doc):
            program, name, *args = container["command"]
            assert program == "trainq" and name in main.commands, container["command"]
            options = {opt for p in main.commands[name].params for opt in getattr(p, "opts", [])}
            used = {a for a in args if a.startswith("--")}
            assert used <= options, (name, used - options)


def test_every_probe_points_at_a_public_route_of_the_service(tmp_path):
    from trainq.service.app import create_app

    app = create_app(Settings(data_dir=tmp_path))
    client = app.test_client()
    probes = 0
    for doc in documents():
        for container in containers(doc):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                if kind in container:
                    probe = container[kind]["httpGet"]
                    assert probe["port"] in ports, (kind, probe)
                    answer = client.get(probe["path"])  # no token: a kubelet has none
                    assert answer.status_code in (200, 503), (probe["path"], answer.status_code)
                    probes += 1
            assert all(p == 8000 for p in ports.values())  # TRAINQ_PORT's value in the same container
    assert probes == 3


def test_keda_scales_deployments_that_exist_on_metrics_the_service_exposes(tmp_path):
    from trainq.service.app import create_app
    from trainq.service.migrate import upgrade

    settings = Settings(data_dir=tmp_path)
    upgrade(settings.resolved_database_url)
    exposed = create_app(settings).test_client().get("/metrics").get_data(as_text=True)
    families = set(re.findall(r"^# TYPE (\w+) ", exposed, flags=re.M))
    deployments = {d["metadata"]["name"] for d in documents() if d["kind"] == "Deployment"}
    scaled = [d for d in documents() if d["kind"] == "ScaledObject"]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} == {"trainq-worker-cpu", "trainq-worker-gpu"}
    for doc in scaled:
        assert doc["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in doc["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            used = set(re.findall(r"\btrainq_\w+", trigger["metadata"]["query"]))
            assert used and used <= families, (used - families, sorted(families))


@pytest.mark.parametrize("image", ["trainq:cpu", "trainq:gpu"])
def test_the_images_are_the_ones_docker_compose_builds(image):
    compose = yaml.safe_load((FOLDER.parent.parent / "docker-compose.yml").read_text())
    assert image in {s.get("image") for s in compose["services"].values()}
    assert any(c["image"] == image for d in documents() for c in containers(d))
