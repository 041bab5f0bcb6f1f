"""The deploy files, checked offline: Kubernetes objects against the API schemas (kubernetes-validate, strict),
the kustomization's resources, the native sidecar and its probes, the restricted security settings, the
manifests the ConfigMap carries, and the container image (non-root, no embedded PostgreSQL)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from orchestrator import config, embedded
from tests.conftest import REPO_ROOT, write

KUBE = REPO_ROOT / "deploy" / "kubernetes"
OBJECTS = sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
EXAMPLES = [p for p in OBJECTS if p.name.endswith(".example.yaml")]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def load(name: str) -> Any:
    return yaml.safe_load((KUBE / name).read_text())


def pod_spec(name: str) -> Any:
    return load(name)["spec"]["template"]["spec"]


def sidecar() -> Any:
    return next(c for c in pod_spec("deployment.yaml")["initContainers"] if c["name"] == "orchestrator")


def every_container() -> list[tuple[str, Any]]:
    """(file/name, container) for every container and init container of the workloads."""
    found = []
    for name in ("deployment.yaml", "job.yaml"):
        spec = pod_spec(name)
        found += [(f"{name}/{c['name']}", c) for c in spec.get("initContainers", []) + spec["containers"]]
    return found


def orchestrator_containers() -> list[Any]:
    return [sidecar(), *pod_spec("job.yaml")["containers"]]


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_kubernetes_objects_are_valid(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_kustomization_lists_every_object_but_the_example_secrets() -> None:
    """``kubectl apply -k`` must never overwrite real credentials with the example's placeholders."""
    kustomization = load("kustomization.yaml")
    assert [p.name for p in EXAMPLES] == ["secret.example.yaml"]
    assert sorted(kustomization["resources"]) == [p.name for p in OBJECTS if p not in EXAMPLES]


def test_the_example_secrets_are_what_the_pods_reference_and_clearly_placeholders() -> None:
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((KUBE / "secret.example.yaml").read_text())}
    for data in (s["stringData"] for s in secrets.values()):
        assert all("EXAMPLE" in value for value in data.values()), data
    for where, container in every_container():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]]["stringData"], (where, ref)


def test_the_orchestrator_is_a_native_sidecar_with_three_probes() -> None:
    spec = pod_spec("deployment.yaml")
    assert all(c["name"] != "orchestrator" for c in spec["containers"])
    container = sidecar()
    assert container["restartPolicy"] == "Always"
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/startupz", "port": "orchestrator"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # first migrations may take minutes
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "orchestrator"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "orchestrator"}
    assert container["args"][-2:] == ["--state", "database"]
    assert any(e["name"] == "APP_DATABASE_URL" and "secretKeyRef" in e["valueFrom"] for e in container["env"])


def test_the_job_is_a_presync_hook_that_runs_once_and_cleans_up() -> None:
    job = load("job.yaml")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["ttlSecondsAfterFinished"] > 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--once" in container["args"] and container["args"][-2:] == ["--state", "database"]


@pytest.mark.parametrize("name", ["deployment.yaml", "job.yaml"])
def test_pods_are_restricted(name: str) -> None:
    security = pod_spec(name)["securityContext"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


@pytest.mark.parametrize("where", [w for w, _ in every_container()])
def test_every_container_drops_privileges_and_has_resources(where: str) -> None:
    container = dict(every_container())[where]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_the_orchestrator_runs_on_a_read_only_root_filesystem_without_the_embedded_server() -> None:
    for container in orchestrator_containers():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/work", "/tmp"} <= mounts  # writable scratch space: emptyDirs
        assert {"name": embedded.SWITCH, "value": "0"} in container["env"]


def test_prometheus_scrapes_the_sidecar() -> None:
    template = load("deployment.yaml")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    port = next(p["containerPort"] for p in sidecar()["ports"] if p["name"] == "orchestrator")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_targets_the_orchestrator_port_of_the_app_pods() -> None:
    service = load("service.yaml")
    deployment = load("deployment.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080 and port["name"] == "orchestrator"
    assert port["targetPort"] in ("orchestrator", 8080)
    assert any(p["name"] == port["targetPort"] or p["containerPort"] == 8080 for p in sidecar()["ports"])


def test_the_configmap_carries_valid_manifests(tmp_path: Path) -> None:
    configmap = load("configmap.yaml")
    for name, text in configmap["data"].items():
        write(tmp_path / name, text)
    cfg = config.load(tmp_path, base=tmp_path)
    assert [r.name for r in cfg.repos] == ["app"] and len(cfg.tables) == 2
    assert cfg.repos[0].url == "${APP_DATABASE_URL}"  # no ":-" fallback: a missing Secret is an error


def test_the_image_runs_serve_as_a_non_root_user() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert 'ENTRYPOINT ["orchestrator", "serve"' in dockerfile


def test_the_image_switches_the_embedded_server_off_and_does_not_install_it() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(rf"^ENV .*\b{embedded.SWITCH}=0\b", dockerfile, re.MULTILINE)
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs == ["RUN pip install -r requirements.lock", "RUN pip install --no-deps . \\"]
    assert "COPY deploy/requirements.lock " in dockerfile  # the image's pins, not the development ones
    assert "pgserver" not in "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert "pgserver" not in _pins(REPO_ROOT / "deploy" / "requirements.lock")


def _pins(path: Path) -> dict[str, str]:
    """Package (canonical name) -> its ``name==version`` line."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(line.split("==")[0]): line for line in lines if line and not line.startswith("#")}


def _closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution ``name[extras]`` needs, by the installed metadata (this interpreter's markers)."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        for text in metadata.requires(current) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in {"", *wanted}):
                continue
            key = canonicalize_name(requirement.name)
            if key not in seen or requirement.extras:
                seen.add(key)
                todo.append((requirement.name, frozenset(requirement.extras)))
    return seen


def test_the_image_pins_are_the_development_pins_without_the_embedded_extra() -> None:
    image, development = _pins(REPO_ROOT / "deploy" / "requirements.lock"), _pins(REPO_ROOT / "requirements.lock")
    assert set(image) == _closure("orchestrator")
    assert set(development) == _closure("orchestrator", frozenset({"embedded"}))
    assert "pgserver" in development and "pgserver" not in image
    assert all(development[name] == line for name, line in image.items())
