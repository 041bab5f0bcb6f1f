"""The deploy files, checked offline: Kubernetes objects against the API schemas (kubernetes-validate, strict),
the kustomization's resources, the manifests the ConfigMap carries, and the container's non-root user."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orchestrator import config
from tests.conftest import REPO_ROOT, write

KUBE = REPO_ROOT / "deploy" / "kubernetes"
OBJECTS = sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_kubernetes_objects_are_valid(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_kustomization_lists_every_object() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in OBJECTS]


def test_the_sidecar_probes_and_runs_serve_with_database_state() -> None:
    deployment = yaml.safe_load((KUBE / "deployment.yaml").read_text())
    sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "orchestrator")
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["args"][-2:] == ["--state", "database"]
    assert any(e["name"] == "APP_DATABASE_URL" and "secretKeyRef" in e["valueFrom"] for e in sidecar["env"])
    job = yaml.safe_load((KUBE / "job.yaml").read_text())
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert "--once" in job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_configmap_carries_valid_manifests(tmp_path: Path) -> None:
    configmap = yaml.safe_load((KUBE / "configmap.yaml").read_text())
    for name, text in configmap["data"].items():
        write(tmp_path / name, text)
    cfg = config.load(tmp_path, base=tmp_path)
    assert [r.name for r in cfg.repos] == ["app"] and len(cfg.tables) == 2


def test_the_image_runs_serve_as_a_non_root_user() -> None:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    assert 'ENTRYPOINT ["orchestrator", "serve"' in dockerfile
