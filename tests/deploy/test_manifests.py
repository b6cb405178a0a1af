"""deploy/: the Kubernetes and KServe manifests validate offline against published schemas.

Kubernetes kinds: the schemas bundled in kubernetes-validate, strict (unknown fields fail).
KServe's CRDs (ServingRuntime, InferenceService): their published OpenAPI schemas, trimmed to
our manifests' fields by scripts/trim_crd_schema.py and kept in deploy/kserve/schemas/, and the
Pod parts inside them (containers, volumes) as a Pod through kubernetes-validate too.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
# Native gRPC probes are GA from 1.27; the newest schemas the package bundles check the rest.
VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]
CRD_SCHEMAS = {("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-v1alpha1.json",
               ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json"}


def _docs(folder: Path) -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", d) for p in sorted(folder.glob("*.yaml"))
            for i, d in enumerate(yaml.safe_load_all(p.read_text())) if d]


def _by_kind(folder: Path) -> dict[str, dict]:
    return {d["kind"]: d for _, d in _docs(folder)}


def _k8s_validate(doc: dict, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def _crd_errors(doc: dict) -> list[str]:
    schema = json.loads((KSERVE / "schemas" / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def _as_pod(name: str, containers: list[dict], volumes: list[dict] = ()) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": containers, "volumes": list(volumes)}}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,doc", _docs(K8S), ids=[n for n, _ in _docs(K8S)])
def test_kubernetes_manifests_validate_strictly(name, doc, version):
    _k8s_validate(doc, version)


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _docs(KSERVE) if d["apiVersion"] == "v1"])
def test_kserve_plain_kubernetes_objects_validate(name, doc):
    _k8s_validate(doc, VERSIONS[-1])


def test_kserve_custom_resources_validate_against_their_published_schema():
    docs = [d for _, d in _docs(KSERVE) if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]
    assert {d["kind"] for d in docs} == {"ServingRuntime", "InferenceService"}
    for doc in docs:
        assert _crd_errors(doc) == [], doc["kind"]
    for path in (KSERVE / "schemas").glob("*.json"):
        assert "kserve/kserve@" in json.loads(path.read_text())["$comment"]  # where it came from


def test_pod_parts_of_the_kserve_resources_validate_as_a_pod():
    kinds = _by_kind(KSERVE)
    _k8s_validate(_as_pod("runtime", kinds["ServingRuntime"]["spec"]["containers"]), VERSIONS[-1])
    predictor = kinds["InferenceService"]["spec"]["predictor"]
    model = {k: v for k, v in predictor["model"].items()
             if k not in ("modelFormat", "runtime", "protocolVersion", "storageUri")}
    _k8s_validate(_as_pod("predictor", [{"name": "kserve-container", "image": "x", **model}],
                          predictor["volumes"]), VERSIONS[-1])


def test_validation_catches_misspelt_fields_and_wrong_values():
    deployment = _by_kind(K8S)["Deployment"]
    bad = copy.deepcopy(deployment)
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(bad, VERSIONS[-1])
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(bad, VERSIONS[-1])
    isvc = _by_kind(KSERVE)["InferenceService"]
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["protocolVersions"] = ["grpc-v2"]
    assert any("protocolVersions" in e for e in _crd_errors(bad))
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["minReplicas"] = "one"
    assert any("minReplicas" in e for e in _crd_errors(bad))
    runtime = _by_kind(KSERVE)["ServingRuntime"]
    bad = copy.deepcopy(runtime)
    bad["spec"]["supportedModelFormats"][0]["autoselect"] = True
    assert _crd_errors(bad)


def _containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_workloads_probe_health_ask_for_a_gpu_and_keep_the_engine_cache(kind):
    doc = _by_kind(K8S)[kind]
    pod = doc["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    config = tomllib.loads(_by_kind(K8S)["ConfigMap"]["data"]["config.toml"])
    port = int(config["server"]["listen"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": port, "service": ""}  # grpc.health.v1, overall health
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "hostPath" in volumes[mounts[config["cache"]["dir"]]]  # engines stay on the node that built them
    assert volumes[mounts["/etc/edgeinfer"]]["configMap"]["name"] == _by_kind(K8S)["ConfigMap"]["metadata"]["name"]
    metrics_port = config["metrics"]["listen"].rsplit(":", 1)[1]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == metrics_port
    assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > config["server"]["grace_period_s"]


def test_headless_service_selects_the_pods_on_the_grpc_port():
    svc, dep = _by_kind(K8S)["Service"], _by_kind(K8S)["Deployment"]
    assert svc["spec"]["clusterIP"] == "None"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "grpc"
    assert grpc_port["targetPort"] in {p["name"] for p in _containers(dep)[0]["ports"]}


@pytest.mark.parametrize("folder", [K8S, KSERVE])
def test_configmaps_hold_valid_edgeinfer_configs(folder, tmp_path):
    from edgeinfer.config import load_config

    cm = _by_kind(folder)["ConfigMap"]
    path = tmp_path / "config.toml"
    path.write_text(cm["data"]["config.toml"])
    config = load_config(path, check_files=False)  # the model files live in the cluster
    assert config.models and config.server.listen.endswith(":50051")


def test_kserve_runtime_speaks_grpc_v2_on_the_port_its_config_listens_on():
    kinds = _by_kind(KSERVE)
    runtime, isvc = kinds["ServingRuntime"], kinds["InferenceService"]
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    (c,) = runtime["spec"]["containers"]
    assert c["ports"] == [{"name": "h2c", "containerPort": 50051, "protocol": "TCP"}]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "grpc-v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    config = tomllib.loads(kinds["ConfigMap"]["data"]["config.toml"])
    # KServe v2 clients address the model by the InferenceService's name.
    assert [m["name"] for m in config["models"]] == [isvc["metadata"]["name"]]
    assert all(m["onnx"].startswith("/mnt/models/") for m in config["models"])
