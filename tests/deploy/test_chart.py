"""The Helm chart: lint, render for the default and the fleet values, validate every object."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    NAMESPACE,
    ROOT,
    chart,
    find,
    fleet_values,
    notes,
    one,
    pod_specs,
    render,
    validate,
)

SELECTOR = {"app.kubernetes.io/name": "cunliang", "app.kubernetes.io/instance": "cunliang"}
VALUE_SETS = {"default": None, "fleet": fleet_values()}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    values = VALUE_SETS[request.param]
    return values, render(values)


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    return render(fleet_values())


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render(None)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean_in_strict_mode(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


def test_every_rendered_object_matches_its_schema(
    case: tuple[dict[str, Any] | None, list[dict[str, Any]]],
) -> None:
    _, objects = case
    assert len(objects) >= 8
    for obj in objects:
        validate(obj)


def test_fleet_renders_every_kind(fleet: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in fleet}
    assert kinds >= {
        "RayCluster",
        "StatefulSet",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "Secret",
        "ServiceAccount",
        "NetworkPolicy",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    }
    # external database: no bundled PostgreSQL
    assert find(fleet, "StatefulSet", "cunliang-postgresql") == []


def test_crd_schemas_reject_a_misspelt_field(fleet: list[dict[str, Any]]) -> None:
    """The vendored schemas are strict: a typo must fail, not be pruned at install."""
    ray = copy.deepcopy(one(fleet, "RayCluster"))
    ray["spec"]["workerGroupSpec"] = ray["spec"].pop("workerGroupSpecs")
    with pytest.raises(jsonschema.ValidationError, match="workerGroupSpec"):
        validate(ray)
    ray = copy.deepcopy(one(fleet, "RayCluster"))
    ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolice"):
        validate(ray)
    monitor = copy.deepcopy(one(fleet, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(monitor)


def _resources_param(group: dict[str, Any]) -> dict[str, int]:
    """Decode KubeRay's quoted JSON: '"{\\"name\\": n}"' -> {"name": n}."""
    quoted = group["rayStartParams"]["resources"]
    assert quoted.startswith('"') and quoted.endswith('"'), quoted
    decoded: dict[str, int] = json.loads(json.loads(quoted))
    return decoded


def test_one_worker_group_per_device_class(fleet: list[dict[str, Any]]) -> None:
    values = fleet_values()
    ray = one(fleet, "RayCluster")
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    assert list(groups) == [g["name"] for g in values["workerGroups"]]
    for wanted in values["workerGroups"]:
        group = groups[wanted["name"]]
        class_id = f"{wanted['site']}/{wanted['device']}"
        assert _resources_param(group) == {f"device_class:{class_id}": wanted["devicesPerPod"]}
        assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (
            wanted["minReplicas"],
            wanted["replicas"],
            wanted["maxReplicas"],
        )
        pod = group["template"]["spec"]
        ray_container = pod["containers"][0]
        selector = pod["nodeSelector"]
        assert selector["cunliang.io/site"] == wanted["site"]
        if wanted["kind"] == "gpu":
            assert ray_container["image"] == "registry.internal/cunliang/cunliang:0.1.0-cuda"
            assert ray_container["resources"]["limits"]["nvidia.com/gpu"] == wanted["devicesPerPod"]
            assert selector["nvidia.com/gpu.product"] == wanted["gpuProduct"]
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert ray_container["image"] == "registry.internal/cunliang/cunliang:0.1.0-cpu"
            assert "nvidia.com/gpu" not in ray_container["resources"]["limits"]
            assert "nvidia.com/gpu.product" not in selector


def test_worker_runs_kuberays_start_after_the_agent(
    case: tuple[dict[str, Any] | None, list[dict[str, Any]]],
) -> None:
    values, objects = case
    groups = (values or chart().values)["workerGroups"]
    wanted = {g["name"]: g for g in groups}
    for group in one(objects, "RayCluster")["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        (ray_container,) = pod["containers"]
        # KubeRay generates `ray start --address=...` for container 0: no command of ours
        assert "command" not in ray_container and "args" not in ray_container
        (agent,) = pod["initContainers"]
        assert agent["command"] == ["cunliang", "agent"]
        assert agent["args"] == [
            "--profile=quick",
            "--out=/data/profile.json",
            f"--post=http://cunliang-gateway-internal.{NAMESPACE}.svc.cluster.local:8000",
        ]
        # it profiles the devices the Ray container then gets, and leaves the profile in /data
        assert agent["resources"] == ray_container["resources"]
        assert agent["image"] == ray_container["image"]
        mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
        assert (
            mounts["/data"]
            == {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}["/data"]
        )
        env = _env(agent)
        group_values = wanted[group["groupName"]]
        assert env["CUNLIANG_DEVICE_CLASS"] == f"{group_values['site']}/{group_values['device']}"
        assert env["CUNLIANG_ADMIN_TOKEN"]["secretKeyRef"]["name"] == "cunliang-admin"


def test_agent_can_be_switched_off_or_pointed_elsewhere() -> None:
    values = fleet_values()
    values["agent"] = {"profile": "full", "postUrl": "http://inventory.ops:8000"}
    group = one(render(values), "RayCluster")["spec"]["workerGroupSpecs"][0]
    args = group["template"]["spec"]["initContainers"][0]["args"]
    assert args[0] == "--profile=full" and args[2] == "--post=http://inventory.ops:8000"
    values["agent"] = {"enabled": False}
    group = one(render(values), "RayCluster")["spec"]["workerGroupSpecs"][0]
    assert "initContainers" not in group["template"]["spec"]


def test_head_runs_the_scheduler(case: tuple[dict[str, Any] | None, list[dict[str, Any]]]) -> None:
    _, objects = case
    head = one(objects, "RayCluster")["spec"]["headGroupSpec"]
    ray_head, scheduler = head["template"]["spec"]["containers"]
    assert "command" not in ray_head
    assert "exec cunliang scheduler --ray-address auto" in " ".join(scheduler["args"])
    assert {m["mountPath"] for m in scheduler["volumeMounts"]} >= {"/tmp/ray", "/tmp", "/data"}


def test_autoscaling_options(fleet: list[dict[str, Any]], default: list[dict[str, Any]]) -> None:
    scaled = one(fleet, "RayCluster")["spec"]
    assert scaled["enableInTreeAutoscaling"] is True
    assert scaled["autoscalerOptions"]["upscalingMode"] == "Conservative"
    assert scaled["autoscalerOptions"]["idleTimeoutSeconds"] == 600
    # KubeRay gives the head the ServiceAccount and Role its autoscaler needs
    assert "serviceAccountName" not in scaled["headGroupSpec"]["template"]["spec"]
    fixed = one(default, "RayCluster")["spec"]
    assert fixed["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in fixed


def test_gateway_command_probes_and_service(
    case: tuple[dict[str, Any] | None, list[dict[str, Any]]],
) -> None:
    _, objects = case
    deployment = one(objects, "StatefulSet", "cunliang-gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "cunliang",
        "gateway",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    # /healthz (503 while no replica is ready) gates traffic; liveness only asks for HTTP
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "http"}
    # room to read the usage WAL before listening, and to store it when stopping
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 120
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["securityContext"]["fsGroup"] == 10001  # the WAL claim is writable
    internal = one(objects, "Service", "cunliang-gateway-internal")
    assert internal["spec"]["publishNotReadyAddresses"] is True
    assert internal["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    service = one(objects, "Service", "cunliang-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_gateway_usage_wal_is_on_a_claim_per_pod_or_in_the_pod() -> None:
    """The usage WAL outlives a gateway pod on its own PersistentVolumeClaim (a StatefulSet:
    the pod that replaces it replays it), mounted where the gateway keeps it; disabled, the
    gateway is a Deployment with the WAL in its emptyDir data volume."""
    from scheduler.gateway.config import GatewayConfig
    from scheduler.settings import Settings

    objects = render(None)
    gateway = one(objects, "StatefulSet", "cunliang-gateway")
    assert gateway["spec"]["serviceName"] == "cunliang-gateway-internal"
    assert gateway["spec"]["podManagementPolicy"] == "Parallel"
    (claim,) = gateway["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "usage-wal"
    assert claim["spec"]["resources"]["requests"] == {"storage": "4Gi"}
    assert "storageClassName" not in claim["spec"]  # the cluster's default
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    data_dir = _env(container)["CUNLIANG_DATA_DIR"]
    wal_dir = GatewayConfig.from_settings(Settings(data_dir=data_dir)).wal_dir
    assert {"name": "usage-wal", "mountPath": str(wal_dir)} in container["volumeMounts"]
    assert find(objects, "Deployment", "cunliang-gateway") == []

    sized = render(
        {"gateway": {"usageWal": {"persistence": {"size": "20Gi", "storageClassName": "ssd"}}}}
    )
    (claim,) = one(sized, "StatefulSet", "cunliang-gateway")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "ssd"
    assert claim["spec"]["resources"]["requests"] == {"storage": "20Gi"}

    plain = render({"gateway": {"usageWal": {"persistence": {"enabled": False}}}})
    assert find(plain, "StatefulSet", "cunliang-gateway") == []
    deployment = one(plain, "Deployment", "cunliang-gateway")
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert [m for m in mounts if m["name"] == "usage-wal"] == []
    for obj in plain:
        validate(obj)


def test_fleet_gateway_has_ingress_and_hpa(fleet: list[dict[str, Any]]) -> None:
    deployment = one(fleet, "StatefulSet", "cunliang-gateway")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = one(fleet, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "cunliang-gateway"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    ingress = one(fleet, "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "llm.example.com"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "cunliang-gateway", "port": {"name": "http"}}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_external_database_comes_from_the_secret(fleet: list[dict[str, Any]]) -> None:
    for owner, pod in pod_specs(fleet):
        for container in pod["containers"]:
            url = _env(container)["CUNLIANG_DATABASE_URL"]
            assert url == {"secretKeyRef": {"name": "cunliang-db", "key": "database-url"}}, owner


def test_migrations_hook(fleet: list[dict[str, Any]], default: list[dict[str, Any]]) -> None:
    job = one(fleet, "Job", "cunliang-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["cunliang", "db", "upgrade"]
    # the bundled PostgreSQL does not exist before install: its first run is post-install
    trial = one(default, "Job", "cunliang-migrations")
    assert trial["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_bundled_postgresql_for_trials(default: list[dict[str, Any]]) -> None:
    statefulset = one(default, "StatefulSet", "cunliang-postgresql")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "8Gi"
    }
    secret = one(default, "Secret", "cunliang-postgresql")
    import base64

    url = base64.b64decode(secret["data"]["database-url"]).decode()
    password = base64.b64decode(secret["data"]["postgres-password"]).decode()
    assert url == f"postgresql+psycopg://cunliang:{password}@cunliang-postgresql:5432/cunliang"
    assert len(password) == 32
    gateway = one(default, "StatefulSet", "cunliang-gateway")["spec"]["template"]["spec"]
    assert _env(gateway["containers"][0])["CUNLIANG_DATABASE_URL"] == {
        "secretKeyRef": {"name": "cunliang-postgresql", "key": "database-url"}
    }


def test_admin_token_generated_given_or_external() -> None:
    import base64

    generated = one(render(None), "Secret", "cunliang-admin")
    assert len(base64.b64decode(generated["data"]["admin-token"])) == 48
    given = one(render({"adminToken": {"value": "s3cret-token"}}), "Secret", "cunliang-admin")
    assert base64.b64decode(given["data"]["admin-token"]) == b"s3cret-token"
    external = render({"adminToken": {"existingSecret": "ops-admin", "key": "token"}})
    assert find(external, "Secret", "cunliang-admin") == []
    gateway = one(external, "StatefulSet", "cunliang-gateway")["spec"]["template"]["spec"]
    assert _env(gateway["containers"][0])["CUNLIANG_ADMIN_TOKEN"] == {
        "secretKeyRef": {"name": "ops-admin", "key": "token"}
    }


def test_admin_token_is_kept_across_upgrades_with_lookup() -> None:
    """Offline rendering cannot reach a cluster; the template must read the live Secret first."""
    template = (CHART / "templates" / "secrets.yaml").read_text()
    lookup_at = template.index('lookup "v1" "Secret" .Release.Namespace $name')
    assert lookup_at < template.index("randAlphaNum 48")


def test_pods_run_non_root_with_read_only_root(
    case: tuple[dict[str, Any] | None, list[dict[str, Any]]],
) -> None:
    _, objects = case
    for owner, pod in pod_specs(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True, owner
        assert pod.get("automountServiceAccountToken") is False or owner.endswith("/head"), owner
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, owner
            assert context["readOnlyRootFilesystem"] is True, owner
            assert context["capabilities"]["drop"] == ["ALL"], owner
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], owner


def test_no_rbac_objects(case: tuple[dict[str, Any] | None, list[dict[str, Any]]]) -> None:
    """Nothing of ours calls the Kubernetes API; KubeRay makes the autoscaler's own Role."""
    _, objects = case
    assert not {o["kind"] for o in objects} & {
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
    }
    account = one(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def test_network_policies_cover_every_workload(fleet: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in find(fleet, "NetworkPolicy")}
    gateway = policies["cunliang-gateway"]
    assert gateway["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert gateway["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    ray = policies["cunliang-ray"]
    assert ray["podSelector"] == {"matchLabels": {"ray.io/cluster": "cunliang"}}
    metrics_rule = ray["ingress"][1]
    assert metrics_rule["from"] == fleet_values()["networkPolicy"]["metricsFrom"]


def test_prometheus_rule_is_the_canonical_rules_file(fleet: list[dict[str, Any]]) -> None:
    canonical = CHART / "files" / "rules.yaml"
    plain = ROOT / "deploy" / "prometheus" / "rules.yaml"
    assert plain.resolve() == canonical.resolve() or plain.read_bytes() == canonical.read_bytes()
    rule = one(fleet, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(canonical.read_text())


def test_dashboard_configmaps_for_grafana(fleet: list[dict[str, Any]]) -> None:
    maps = find(fleet, "ConfigMap")
    shipped = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert len(maps) == len(shipped) == 3
    by_file = {key: value for m in maps for key, value in m["data"].items()}
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
    for path in shipped:
        assert json.loads(by_file[path.name]) == json.loads(path.read_text())


def test_monitors_scrape_gateway_and_ray_pods(fleet: list[dict[str, Any]]) -> None:
    monitor = one(fleet, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    # one of the gateway's two Services (the one with every pod, ready or not): each pod
    # is scraped once, not once per Service
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        o["metadata"]["name"]
        for o in find(fleet, "Service")
        if selector.items() <= o["metadata"]["labels"].items()
    ]
    assert scraped == ["cunliang-gateway-internal"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pods = one(fleet, "PodMonitor")
    assert pods["spec"]["selector"] == {"matchLabels": {"ray.io/cluster": "cunliang"}}
    ray = one(fleet, "RayCluster")
    for group in ray["spec"]["workerGroupSpecs"]:
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 8080} in ports
    # the scheduler sidecar's own /metrics, reachable from Prometheus
    assert [e["port"] for e in pods["spec"]["podMetricsEndpoints"]] == ["metrics", "sched-metrics"]
    _head, scheduler = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "sched-metrics", "containerPort": 9401} in scheduler["ports"]
    assert "--metrics-host 0.0.0.0 --metrics-port 9401" in " ".join(scheduler["args"])


def test_notes_tell_how_to_reach_it_and_get_the_first_key() -> None:
    text = notes(fleet_values())
    assert "export CUNLIANG_URL=https://llm.example.com/v1" in text
    assert "kubectl -n llm exec statefulset/cunliang-gateway -- cunliang tenant add" in text
    assert "kubectl -n llm exec statefulset/cunliang-gateway -- cunliang key create" in text
    assert "get secret cunliang-admin" in text
    trial = notes(None)
    assert "port-forward svc/cunliang-gateway 8000:80" in trial
    plain = notes({"gateway": {"usageWal": {"persistence": {"enabled": False}}}})
    assert "exec deployment/cunliang-gateway -- cunliang tenant add" in plain


def test_client_side_install_dry_run() -> None:
    """Helm's own install path (schema, kubeVersion, hooks split from the manifest), offline:
    a client dry run with memory storage and an unreachable API server."""
    config = helm.Config(
        storage_driver="memory", namespace=NAMESPACE, kube_apiserver="https://127.0.0.1:1"
    )
    with config:
        release = config.install(
            CHART, "cunliang", fleet_values(), namespace=NAMESPACE, dry_run="client"
        )
    assert release["status"] == "pending-install"
    manifest = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    kinds = {doc["kind"] for doc in manifest}
    assert "RayCluster" in kinds and "StatefulSet" in kinds
    # the migration Job is a hook, not part of the release's manifest
    assert "Job" not in kinds
    assert "cunliang key create acme" in release["notes"]


def test_restricted_gateway_still_admits_prometheus() -> None:
    values = fleet_values()
    callers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    values["networkPolicy"]["gatewayFrom"] = callers
    policy = one(render(values), "NetworkPolicy", "cunliang-gateway")
    validate(policy)
    sources = [rule["from"] for rule in policy["spec"]["ingress"]]
    own_pods = [{"podSelector": {"matchLabels": SELECTOR}}]
    assert sources == [callers, own_pods, values["networkPolicy"]["metricsFrom"]]
