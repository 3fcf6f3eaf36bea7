"""Wiring checks for the container files: docker-compose.yml (+ the CPU override),
the gateway's Dockerfile, and the Prometheus / Grafana files they mount.

No Docker engine runs where these tests run, so the files are parsed, merged the
way Docker Compose merges them, and cross-checked: every name one file uses must
exist in the file it points at.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE_FILE = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_FILE = ROOT / "configs" / "prometheus" / "prometheus.yml"

# How each stack variant is started (see the header of docker-compose.yml).
VARIANTS = {
    "gpu": [COMPOSE_FILE],
    "cpu": [COMPOSE_FILE, CPU_OVERRIDE_FILE],
}

SERVED_MODEL_NAME = "default-model"


# --------------------------------------------------------------------------------------
# A small model of Compose's loader: YAML tags, ${VAR:-default} interpolation, merging.
# --------------------------------------------------------------------------------------


class _Reset:
    """Value of a `!reset` tag: the key is removed from the merged model."""


RESET = _Reset()


@dataclass(frozen=True)
class _Override:
    """Value of an `!override` tag: replaces the earlier value instead of merging."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that understands Compose's `!reset` and `!override` tags."""


def _construct_reset(loader: yaml.SafeLoader, node: yaml.Node) -> _Reset:
    return RESET


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Resolve `${VAR}`, `${VAR:-default}` and `$$` as if no variable were set.

    The tests check what the files do out of the box, so the caller's
    environment is ignored on purpose.
    """
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            operator, default = match.group(2), match.group(3)
            if operator in (":-", "-"):
                return default
            if operator in (":?", "?"):
                raise AssertionError(f"{match.group(0)!r} requires a variable to be set")
            return ""

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def _normalise_env(env: Any) -> dict[str, Any]:
    if env is None:
        return {}
    if isinstance(env, dict):
        return dict(env)
    out: dict[str, Any] = {}
    for item in env:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


# Keys whose sequences Compose replaces instead of appending to.
_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def merge(base: Any, over: Any, key: str = "") -> Any:
    """Merge two Compose trees with Compose's rules (the parts these files use)."""
    if isinstance(over, _Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is RESET:
                out.pop(k, None)
            elif k == "environment":
                out[k] = {**_normalise_env(base.get(k)), **_normalise_env(v)}
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = v.value if isinstance(v, _Override) else v
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in _REPLACED_SEQUENCES:
        return base + [item for item in over if item not in base]
    return over


def _strip_tags(value: Any) -> Any:
    """Drop tag markers that had nothing to merge with (a single-file load)."""
    if isinstance(value, _Override):
        return _strip_tags(value.value)
    if isinstance(value, dict):
        return {k: _strip_tags(v) for k, v in value.items() if v is not RESET}
    if isinstance(value, list):
        return [_strip_tags(v) for v in value]
    return value


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=ComposeLoader)


def load_stack(files: list[Path]) -> dict[str, Any]:
    model: Any = {}
    for path in files:
        model = merge(model, load_yaml(path))
    resolved: dict[str, Any] = interpolate(_strip_tags(model))
    return resolved


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def stack(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The merged compose model of one variant ("cpu" or "gpu")."""
    return load_stack(VARIANTS[request.param])


@pytest.fixture(scope="module")
def gpu_stack() -> dict[str, Any]:
    return load_stack(VARIANTS["gpu"])


@pytest.fixture(scope="module")
def cpu_stack() -> dict[str, Any]:
    return load_stack(VARIANTS["cpu"])


# --------------------------------------------------------------------------------------
# Helpers over the merged model
# --------------------------------------------------------------------------------------


def services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = stack.get("services")
    assert isinstance(svcs, dict) and svcs, "compose file defines no services"
    return svcs


def service(stack: dict[str, Any], name: str) -> dict[str, Any]:
    svcs = services(stack)
    assert name in svcs, f"compose has no service {name!r}; it has {sorted(svcs)}"
    return svcs[name]


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    """depends_on as {target: condition}, for both the list and the mapping form."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


@dataclass(frozen=True)
class Port:
    published: str | None
    target: int


def parse_ports(svc: dict[str, Any]) -> list[Port]:
    out: list[Port] = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            out.append(Port(str(entry.get("published")), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        target = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 else None
        out.append(Port(published, target))
    return out


def container_ports(svc: dict[str, Any]) -> set[int]:
    """Ports the container listens on as declared by `ports` and `expose`."""
    declared = {p.target for p in parse_ports(svc)}
    declared |= {int(str(e).split("/")[0]) for e in svc.get("expose") or []}
    return declared


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    bind: bool


def parse_volumes(svc: dict[str, Any]) -> list[Mount]:
    out: list[Mount] = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            out.append(Mount(entry["source"], entry["target"], entry.get("type") == "bind"))
            continue
        source, target = str(entry).split(":")[:2]
        out.append(Mount(source, target, source.startswith((".", "/"))))
    return out


def host_path(source: str) -> Path:
    return (ROOT / source).resolve()


def container_path_to_host(svc: dict[str, Any], container_file: str) -> Path | None:
    """Host path behind a file inside the container, through the service's bind mounts."""
    wanted = PurePosixPath(container_file)
    best: tuple[int, Path] | None = None
    for mount in parse_volumes(svc):
        if not mount.bind:
            continue
        target = PurePosixPath(mount.target)
        if wanted == target or target in wanted.parents:
            depth = len(target.parts)
            candidate = host_path(mount.source) / wanted.relative_to(target)
            if best is None or depth > best[0]:
                best = (depth, candidate)
    return best[1] if best else None


def command_args(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in _normalise_env(svc.get("environment")).items()}


def healthcheck_test(svc: dict[str, Any]) -> list[str] | str | None:
    hc = svc.get("healthcheck") or {}
    if hc.get("disable"):
        return None
    test: list[str] | str | None = hc.get("test")
    if not test or test == ["NONE"]:
        return None
    return test


def gateway_routes_file(stack: dict[str, Any]) -> Path:
    gateway = service(stack, "gateway")
    config = env(gateway).get("DELIBERATE_CONFIG")
    assert config, "gateway has no DELIBERATE_CONFIG in its environment"
    assert config.startswith("/app/configs/"), (
        f"gateway DELIBERATE_CONFIG={config!r} is outside /app/configs, the directory the "
        "Dockerfile copies ./configs into"
    )
    return ROOT / "configs" / PurePosixPath(config).relative_to("/app/configs")


# --------------------------------------------------------------------------------------
# docker-compose.yml (+ docker-compose.cpu.yml)
# --------------------------------------------------------------------------------------


def test_expected_services_exist(stack: dict[str, Any]) -> None:
    expected = {"gateway", "vllm", "redis", "prometheus", "grafana"}
    missing = expected - set(services(stack))
    assert not missing, f"compose is missing services {sorted(missing)}"


def test_depends_on_targets_exist_and_healthchecked(stack: dict[str, Any]) -> None:
    svcs = services(stack)
    for name, svc in svcs.items():
        for target, condition in depends_on(svc).items():
            assert target in svcs, (
                f"service {name!r} depends_on {target!r}, which is not a service in this "
                f"variant (services: {sorted(svcs)})"
            )
            if condition == "service_healthy":
                assert healthcheck_test(svcs[target]) is not None, (
                    f"{name!r} waits for {target!r} to be healthy, but {target!r} has no "
                    "healthcheck, so compose would wait forever"
                )


def test_gateway_wiring(stack: dict[str, Any]) -> None:
    gateway = service(stack, "gateway")
    assert gateway.get("build"), "gateway must be built from the repo's Dockerfile"
    assert Port("8080", 8080) in parse_ports(gateway), (
        f"gateway must publish 8080:8080, has ports {gateway.get('ports')}"
    )
    assert depends_on(gateway) == {"vllm": "service_healthy", "redis": "service_healthy"}, (
        f"gateway must wait for healthy vllm and redis, has {depends_on(gateway)}"
    )
    assert gateway.get("restart") == "unless-stopped", "gateway should restart unless stopped"
    test = healthcheck_test(gateway)
    assert test is not None and "/health" in " ".join(test), (
        f"gateway healthcheck must probe /health, is {test!r}"
    )


def test_gateway_routes_file_exists(stack: dict[str, Any]) -> None:
    routes = gateway_routes_file(stack)
    assert routes.is_file(), (
        f"gateway DELIBERATE_CONFIG points at {routes.relative_to(ROOT)}, which does not "
        "exist in the repo"
    )


def test_gateway_backends_are_compose_services(stack: dict[str, Any]) -> None:
    svcs = services(stack)
    routes = load_yaml(gateway_routes_file(stack))
    backends = routes.get("backends") or []
    assert backends, "the gateway's routes file declares no backends"
    for backend in backends:
        for replica in backend["replicas"]:
            url = urlsplit(replica)
            assert url.hostname in svcs, (
                f"backend {backend['name']!r} replica {replica} names host {url.hostname!r}, "
                f"which is not a compose service ({sorted(svcs)})"
            )
            target = svcs[url.hostname]
            port = url.port or (443 if url.scheme == "https" else 80)
            assert port in container_ports(target), (
                f"replica {replica} uses port {port}, but service {url.hostname!r} declares "
                f"container ports {sorted(container_ports(target))}"
            )
            served = flag_value(command_args(target), "--served-model-name")
            assert served == backend["model"], (
                f"backend {backend['name']!r} expects model {backend['model']!r} but service "
                f"{url.hostname!r} serves it as {served!r} (--served-model-name)"
            )


def test_gateway_redis_url_points_at_redis(stack: dict[str, Any]) -> None:
    url = urlsplit(env(service(stack, "gateway")).get("DELIBERATE_REDIS_URL", ""))
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379, (
        f"DELIBERATE_REDIS_URL should be redis://redis:6379/<db>, is {url.geturl()!r}"
    )
    redis = service(stack, "redis")
    assert str(redis.get("image", "")).startswith("redis:7"), "redis should run redis:7-alpine"
    assert "redis-cli" in " ".join(healthcheck_test(redis) or []), (
        "redis healthcheck should be `redis-cli ping`"
    )


def test_vllm_serves_with_prefix_caching(stack: dict[str, Any]) -> None:
    vllm = service(stack, "vllm")
    args = command_args(vllm)
    assert "--enable-prefix-caching" in args, (
        f"vllm must run with --enable-prefix-caching (best-of-N shares prefixes); args: {args}"
    )
    assert flag_value(args, "--served-model-name") == SERVED_MODEL_NAME, (
        f"vllm must serve the model as {SERVED_MODEL_NAME!r}, the name the routes file uses"
    )
    assert flag_value(args, "--max-model-len"), "vllm should bound --max-model-len"
    assert flag_value(args, "--port") == "8000", "vllm should listen on 8000"
    assert 8000 in container_ports(vllm), "vllm should declare container port 8000"
    assert vllm.get("ipc") == "host", "vllm needs ipc: host for PyTorch shared memory"
    assert any(m.target == "/root/.cache/huggingface" for m in parse_volumes(vllm)), (
        "vllm should keep the Hugging Face cache in a volume"
    )
    assert "/health" in " ".join(healthcheck_test(vllm) or []), (
        "vllm healthcheck should probe /health"
    )


def test_gpu_variant_reserves_a_gpu(gpu_stack: dict[str, Any]) -> None:
    vllm = service(gpu_stack, "vllm")
    assert str(vllm["image"]).startswith("vllm/vllm-openai:"), (
        f"GPU vllm should use vllm/vllm-openai, uses {vllm['image']!r}"
    )
    devices = vllm.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
    ), f"GPU vllm should reserve an nvidia gpu device, reserves {devices}"


def test_cpu_variant_runs_without_gpu(cpu_stack: dict[str, Any]) -> None:
    vllm = service(cpu_stack, "vllm")
    assert "cpu" in str(vllm["image"]), f"CPU vllm should use vLLM's CPU image, is {vllm['image']}"
    assert "deploy" not in vllm, (
        "the CPU override must drop the GPU reservation (`deploy: !reset null`), "
        f"merged deploy is {vllm.get('deploy')}"
    )
    vllm_env = env(vllm)
    assert vllm_env.get("VLLM_CPU_KVCACHE_SPACE", "").strip(), (
        "CPU vllm needs VLLM_CPU_KVCACHE_SPACE or its worker refuses to start"
    )
    assert "VLLM_CPU_OMP_THREADS_BIND" in vllm_env, "CPU vllm should set VLLM_CPU_OMP_THREADS_BIND"
    args = command_args(vllm)
    assert "--no-enable-chunked-prefill" in args, (
        "CPU vllm needs --no-enable-chunked-prefill: seeded sampling with chunked prefill "
        "crashes the CPU engine"
    )
    assert args.count("--model") == 1, (
        f"merged CPU command should be replaced, not appended: {args}"
    )


def test_images_are_pinned(stack: dict[str, Any]) -> None:
    for name, svc in services(stack).items():
        if "build" in svc:
            continue
        image = str(svc.get("image", ""))
        assert image, f"service {name!r} has neither build nor image"
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"service {name!r} image {image!r} should pin a tag"


def test_vllm_images_share_one_version() -> None:
    gpu = load_stack(VARIANTS["gpu"])["services"]["vllm"]["image"]
    cpu = load_stack(VARIANTS["cpu"])["services"]["vllm"]["image"]
    assert gpu.partition(":")[2] == cpu.partition(":")[2], (
        f"GPU ({gpu}) and CPU ({cpu}) vLLM images should default to the same version"
    )


def test_bind_mounts_exist(stack: dict[str, Any]) -> None:
    for name, svc in services(stack).items():
        for mount in parse_volumes(svc):
            if mount.bind:
                assert host_path(mount.source).exists(), (
                    f"service {name!r} mounts {mount.source}, which does not exist in the repo"
                )


def test_named_volumes_are_declared(stack: dict[str, Any]) -> None:
    declared = set(stack.get("volumes") or {})
    for name, svc in services(stack).items():
        for mount in parse_volumes(svc):
            if not mount.bind:
                assert mount.source in declared, (
                    f"service {name!r} uses volume {mount.source!r}, not declared under volumes:"
                )


# --------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------


def _prometheus_config(stack: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    prom = service(stack, "prometheus")
    host = container_path_to_host(prom, "/etc/prometheus/prometheus.yml")
    assert host is not None, "prometheus service does not mount /etc/prometheus/prometheus.yml"
    assert host == PROMETHEUS_FILE.resolve(), (
        f"prometheus should mount configs/prometheus/prometheus.yml, mounts {host}"
    )
    return load_yaml(host), host


def test_prometheus_scrapes_compose_services(stack: dict[str, Any]) -> None:
    config, _ = _prometheus_config(stack)
    svcs = services(stack)
    assert config.get("global", {}).get("scrape_interval") == "15s", "scrape every 15s"
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    expected = {"deliberate": ("gateway", 8080), "vllm": ("vllm", 8000)}
    for job_name, (host, port) in expected.items():
        assert job_name in jobs, f"prometheus.yml has no scrape job {job_name!r}"
        job = jobs[job_name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        assert f"{host}:{port}" in targets, f"job {job_name!r} should scrape {host}:{port}"
    for job in jobs.values():
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, _, port = target.rpartition(":")
                assert host in svcs, (
                    f"scrape target {target} of job {job['job_name']!r} is not a compose service"
                )
                assert int(port) in container_ports(svcs[host]), (
                    f"scrape target {target}: service {host!r} declares container ports "
                    f"{sorted(container_ports(svcs[host]))}"
                )


def test_prometheus_rule_files_are_mounted(stack: dict[str, Any]) -> None:
    config, _ = _prometheus_config(stack)
    prom = service(stack, "prometheus")
    rule_files = config.get("rule_files") or []
    assert "alerts.yml" in [PurePosixPath(r).name for r in rule_files], (
        f"prometheus.yml should load alerts.yml, rule_files={rule_files}"
    )
    for rule in rule_files:
        in_container = PurePosixPath("/etc/prometheus") / rule  # relative to the config file
        host = container_path_to_host(prom, str(in_container))
        assert host is not None and host.is_file(), (
            f"rule file {rule} resolves to {in_container} in the container, which no existing "
            "file is mounted at"
        )
    assert depends_on(prom).keys() == {"gateway"}, "prometheus should depend on the gateway"
    assert Port("9090", 9090) in parse_ports(prom), "prometheus should publish 9090"


# --------------------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------------------


def _grafana_file(stack: dict[str, Any], container_file: str) -> Path:
    grafana = service(stack, "grafana")
    host = container_path_to_host(grafana, container_file)
    assert host is not None, f"grafana does not mount anything at {container_file}"
    assert host.exists(), f"grafana's {container_file} maps to {host}, which does not exist"
    return host


def test_grafana_datasource_points_at_prometheus(stack: dict[str, Any]) -> None:
    path = _grafana_file(stack, "/etc/grafana/provisioning/datasources/prometheus.yml")
    sources = load_yaml(path).get("datasources", [])
    assert sources, f"{path.relative_to(ROOT)} provisions no data source"
    url = urlsplit(sources[0]["url"])
    assert url.hostname in services(stack), f"data source host {url.hostname!r} is no service"
    assert url.port in container_ports(services(stack)[url.hostname]), (
        f"data source port {url.port} is not a container port of {url.hostname!r}"
    )
    assert depends_on(service(stack, "grafana")).keys() == {"prometheus"}
    assert Port("3000", 3000) in parse_ports(service(stack, "grafana")), "grafana publishes 3000"


def _dashboards(stack: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any]]]:
    provider_file = _grafana_file(stack, "/etc/grafana/provisioning/dashboards/deliberate.yml")
    providers = load_yaml(provider_file).get("providers", [])
    assert providers, f"{provider_file.relative_to(ROOT)} declares no dashboard provider"
    for provider in providers:
        folder = _grafana_file(stack, provider["options"]["path"])
        files = sorted(folder.glob("*.json"))
        assert files, f"dashboard provider path {folder} holds no JSON dashboard"
        for path in files:
            yield path, json.loads(path.read_text(encoding="utf-8"))


def test_grafana_dashboards_load_and_query(stack: dict[str, Any]) -> None:
    datasource_file = _grafana_file(stack, "/etc/grafana/provisioning/datasources/prometheus.yml")
    uids = {ds.get("uid") for ds in load_yaml(datasource_file)["datasources"]}
    exprs: set[str] = set()
    for path, dash in _dashboards(stack):
        assert dash.get("uid") and dash.get("title"), f"{path.name} needs a uid and a title"
        for panel in dash.get("panels", []):
            for target in panel.get("targets", []):
                ds_uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                assert ds_uid in uids, (
                    f"{path.name} panel {panel.get('title')!r} uses data source {ds_uid!r}, "
                    f"provisioned uids are {uids}"
                )
                exprs.add(" ".join(target["expr"].split()))
    for wanted in (
        "sum(rate(deliberate_requests_total[5m])) by (route)",
        "histogram_quantile(0.95, sum(rate(deliberate_ttft_seconds_bucket[5m])) by (le, route))",
    ):
        assert wanted in exprs, f"no dashboard panel queries {wanted!r}"


# --------------------------------------------------------------------------------------
# The gateway's routes file for compose
# --------------------------------------------------------------------------------------


def test_compose_routes_file_is_consistent(gpu_stack: dict[str, Any]) -> None:
    routes = load_yaml(gateway_routes_file(gpu_stack))
    assert routes.get("version") == 1, "routes file schema version should be 1"
    route_names = {r["name"] for r in routes.get("routes", [])}
    backend_names = {b["name"] for b in routes.get("backends", [])}
    assert routes.get("default_route") in route_names, (
        f"default_route {routes.get('default_route')!r} is not one of {route_names}"
    )
    for route in routes["routes"]:
        assert route["backend"] in backend_names, (
            f"route {route['name']!r} uses unknown backend {route['backend']!r}"
        )


def test_compose_routes_file_passes_the_gateway_loader(gpu_stack: dict[str, Any]) -> None:
    # The same validation `deliberate serve` applies at start-up.
    from routing.loader import ConfigError, load_config
    from routing.references import cross_reference_problems

    path = gateway_routes_file(gpu_stack)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        pytest.fail(f"{path.relative_to(ROOT)} is rejected by the gateway's loader: {exc}")
    problems = cross_reference_problems(cfg)
    assert not problems, f"{path.relative_to(ROOT)} has dangling references: {problems}"


# --------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by build stage (one list per FROM); global ARGs are skipped."""
    text = path.read_text(encoding="utf-8")
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        ins = Instruction(keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            stages.append([])
        if not stages:
            # Only global ARGs may precede the first FROM.
            assert ins.keyword == "ARG", f"Dockerfile instruction before FROM: {line!r}"
            continue
        stages[-1].append(ins)
    return stages


def _exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    return parse_dockerfile(DOCKERFILE)


def test_dockerfile_is_multistage_slim(dockerfile: list[list[Instruction]]) -> None:
    args = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    }
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s[0].args.split()[0]) for s in dockerfile
    ]
    assert len(dockerfile) >= 2, "Dockerfile should build in a builder stage and a runtime stage"
    assert all(b == "python:3.11-slim" for b in bases), (
        f"stages should use python:3.11-slim: {bases}"
    )
    final = dockerfile[-1]
    copies = [i.args for i in final if i.keyword == "COPY"] + [
        i.args for i in final if i.keyword == "RUN"
    ]
    assert any("from=builder" in c for c in copies), (
        "the final stage should take the wheel from the builder stage"
    )


def test_dockerfile_runtime_settings(dockerfile: list[list[Instruction]]) -> None:
    final = dockerfile[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"final USER is {users[-1]!r}, which is root"

    assert any("8080" in i.args.split() for i in final if i.keyword == "EXPOSE"), "EXPOSE 8080"

    envs: dict[str, str] = {}
    for ins in final:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                envs[key] = value
    for key, value in {
        "DELIBERATE_HOST": "0.0.0.0",
        "DELIBERATE_PORT": "8080",
        "DELIBERATE_CONFIG": "/app/configs/routes.yaml",
    }.items():
        assert envs.get(key) == value, (
            f"Dockerfile should set ENV {key}={value}, has {envs.get(key)!r}"
        )

    checks = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert checks and "/health" in checks[-1] and "urllib" in checks[-1], (
        "the final stage needs a HEALTHCHECK that GETs /health with python's urllib"
    )
    cmds = [i.args for i in final if i.keyword == "CMD"]
    assert cmds and _exec_form(cmds[-1]) == ["deliberate", "serve"], (
        f"CMD should be ['deliberate', 'serve'], is {cmds[-1] if cmds else None}"
    )
    assert any(
        i.keyword == "COPY" and i.args.split()[-1].rstrip("/") == "/app/configs" for i in final
    ), "the final stage should COPY configs/ to /app/configs"


def test_dockerfile_installs_no_model_server(dockerfile: list[list[Instruction]]) -> None:
    forbidden = re.compile(r"\b(vllm|torch\w*)\b", re.IGNORECASE)
    for stage in dockerfile:
        for ins in stage:
            if ins.keyword == "RUN":
                assert not forbidden.search(ins.args), (
                    f"the gateway image must not install vllm/torch: RUN {ins.args}"
                )
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = [d for d in dependencies if forbidden.search(d)]
    assert not heavy, f"the gateway's runtime dependencies pull a model server: {heavy}"


def test_dockerfile_copies_every_package(dockerfile: list[list[Instruction]]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = {
        src.rstrip("/")
        for stage in dockerfile
        for ins in stage
        if ins.keyword == "COPY" and not ins.args.startswith("--from")
        for src in _exec_form(ins.args)[:-1]
        if not src.startswith("--")
    }
    missing = [p for p in packages if p not in copied]
    assert not missing, f"the Dockerfile does not copy packages {missing} into the build"
    assert "pyproject.toml" in copied, "the builder stage needs pyproject.toml"


def _dockerignore_patterns() -> list[str]:
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing"
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatch

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").lstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch(part, pat[3:]) for part in PurePosixPath(path).parts) or fnmatch(
                path, pat
            )
        else:
            hit = fnmatch(path, pat) or path.startswith(pat + "/")
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_context_small_but_complete(
    dockerfile: list[list[Instruction]],
) -> None:
    patterns = _dockerignore_patterns()
    for path in (".venv", ".git", "tests", "gateway/__pycache__", ".pytest_cache"):
        assert _ignored(path, patterns), f".dockerignore should exclude {path}"
    for stage in dockerfile:
        for ins in stage:
            if ins.keyword == "COPY" and not ins.args.startswith("--from"):
                for src in _exec_form(ins.args)[:-1]:
                    assert not _ignored(src.rstrip("/"), patterns), (
                        f".dockerignore excludes {src}, which the Dockerfile copies"
                    )
