"""deploy/kubernetes: every core resource validates against the Kubernetes OpenAPI schemas (offline, from the
kubernetes-validate package, strict: unknown fields are errors), every KEDA object against the schema generated from
KEDA's released CRDs (the npm package @kubernetes-models/keda, installed by `make setup` into tests/deploy/keda), and
the objects reference each other and the farm consistently."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from farm.metrics import METRICS
from tests.deploy.common import (
    KUBERNETES,
    SECCOMP_PROFILE,
    WORKER_UID,
    load_yaml,
    load_yaml_all,
    parse_cli,
    setting_variables,
)
from tests.deploy.promql import metric_names
from tests.lib.tools import IN_CI, require
from workers.app import build_queue

pytestmark = pytest.mark.integration

# The oldest Kubernetes these manifests are meant for: user namespaces for pods (hostUsers: false), which the
# worker's unmasked /proc requires, are on by default from 1.33.
K8S_VERSION = "1.33"
KEDA = Path(__file__).with_name("keda")  # package.json + lock: @kubernetes-models/keda (KEDA 2.10.1's CRDs)
NAMESPACE = "mangos-farm"
WORKERS = {"mangos-worker": "default", "mangos-worker-debian": "debian"}  # Deployment -> capability class
FARM_PODS = ("mangos-coordinator", *WORKERS, "mangos-web")


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found.extend((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc) for doc in load_yaml_all(path))
    return found


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


CORE = [(where, doc) for where, doc in manifests() if doc["apiVersion"] != "keda.sh/v1alpha1"]


@pytest.mark.parametrize(("where", "doc"), CORE, ids=[where for where, _ in CORE])
def test_core_resources_validate_against_kubernetes_schemas(where: str, doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {path}: {exc.message}")


def test_the_kubernetes_validation_is_strict() -> None:
    worker = copy.deepcopy(objects("Deployment")["mangos-worker"])
    worker["spec"]["template"]["spec"]["containers"][0]["securityContext"]["procMonut"] = "Unmasked"
    with pytest.raises(kubernetes_validate.ValidationError, match="procMonut"):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


def test_expected_objects() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in manifests()}
    assert kinds == {
        ("Namespace", NAMESPACE),
        ("ConfigMap", "mangos-farm-settings"),
        ("Service", "mangos-redis"),
        ("StatefulSet", "mangos-redis"),
        ("Deployment", "mangos-coordinator"),
        ("Service", "mangos-coordinator"),
        ("Deployment", "mangos-worker"),
        ("Deployment", "mangos-worker-debian"),
        ("Service", "mangos-worker-metrics"),
        ("Deployment", "mangos-web"),
        ("Service", "mangos-web"),
        ("ScaledObject", "mangos-worker-amd64"),
        ("ScaledObject", "mangos-worker-debian-amd64"),
        ("CronJob", "mangos-recipes-update"),
        ("PersistentVolumeClaim", "mangos-recipes-update"),
        ("ConfigMap", "prometheus"),  # prometheus.yaml: what KEDA asks (tests/deploy/test_scaling.py)
        ("Deployment", "prometheus"),
        ("Service", "prometheus"),
    }
    for where, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, where


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    assert kustomization["namespace"] == NAMESPACE


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        name: doc["spec"]["template"]["spec"]
        for kind in ("Deployment", "StatefulSet")
        for name, doc in objects(kind).items()
    }


def test_settings_are_real_and_secrets_are_referenced_not_shipped() -> None:
    config = objects("ConfigMap")["mangos-farm-settings"]
    variables = {k for k in config["data"] if k.startswith("MANGOS_FARM_")}
    assert variables <= setting_variables(), sorted(variables - setting_variables())
    assert config["data"]["MANGOS_FARM_BROKER"] == "redis://mangos-redis.mangos-farm.svc:6379/0"
    assert not objects("Secret"), "credentials and keys are created by the operator, never committed"
    for name in FARM_PODS:
        (container,) = pod_specs()[name]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "mangos-farm-settings"}}], name
        secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
        assert secret_env == {"AWS_ACCESS_KEY_ID": "mangos-s3", "AWS_SECRET_ACCESS_KEY": "mangos-s3"}, name


def test_container_args_are_valid_command_lines() -> None:
    commands = {}
    for name in FARM_PODS:
        (container,) = pod_specs()[name]["containers"]
        assert container["image"] == "mangos-farm:0.1.0"  # kustomization's `images` rewrites it
        assert "command" not in container  # the image's entrypoint is mangos-farm
        commands[name] = parse_cli(container["args"])
    assert commands["mangos-coordinator"].command == "coordinator"
    for name, cls in WORKERS.items():  # each class's Deployment claims exactly its class (none: default only)
        assert commands[name].command == "worker"
        assert commands[name].capability == ["none" if cls == "default" else cls], name
        assert commands[name].arch == "amd64"
        labels = objects("Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert labels["mangos.farm/class"] == cls and labels["mangos.farm/arch"] == "amd64"
    assert build_queue("amd64", "debian") == "mangos.build.amd64.debian"  # the queue the debian workers take
    web = commands["mangos-web"]
    assert (web.command, web.host, web.port) == ("serve", "0.0.0.0", 8080)  # reachable through the Service
    (container,) = pod_specs()["mangos-web"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": web.port}]


def test_services_select_their_pods_and_ports() -> None:
    workloads = {**objects("Deployment"), **objects("StatefulSet")}
    for name, service in objects("Service").items():
        selector = service["spec"]["selector"]
        matched = [
            w for w in workloads.values() if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, f"Service {name} selects no pods"
        for workload in matched:
            port_names = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"
    for name, workload in workloads.items():
        assert workload["spec"]["selector"]["matchLabels"].items() <= (
            workload["spec"]["template"]["metadata"]["labels"].items()
        ), name


def test_one_coordinator_never_two() -> None:
    coordinator = objects("Deployment")["mangos-coordinator"]
    assert coordinator["spec"]["replicas"] == 1
    assert coordinator["spec"]["strategy"] == {"type": "Recreate"}


def test_every_farm_pod_is_unprivileged() -> None:
    for name in FARM_PODS:
        spec = pod_specs()[name]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == WORKER_UID, name
        (container,) = spec["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert not context.get("privileged", False), name
        assert context["capabilities"]["drop"] == ["ALL"], name
        if name != "mangos-worker-debian":  # its one exception: test_the_debian_class_adds_only_what_newuidmap_needs
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
    for name in ("mangos-coordinator", "mangos-web"):
        spec = pod_specs()[name]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(spec["containers"][0]["securityContext"]) == {
            "allowPrivilegeEscalation",
            "capabilities",
            "readOnlyRootFilesystem",
        }


def test_the_debian_class_adds_only_what_newuidmap_needs() -> None:
    """newuidmap/newgidmap (setuid root) write the build's multi-id map: SETUID/SETGID in the bounding set, no
    no_new_privs; held over the pod's own user namespace only (hostUsers: false). Nothing else differs."""
    default, debian = (pod_specs()[name] for name in WORKERS)
    context = debian["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is True
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}
    assert debian["hostUsers"] is False
    relaxed = copy.deepcopy(default)
    relaxed["containers"][0]["securityContext"].update(
        allowPrivilegeEscalation=True, capabilities=context["capabilities"]
    )
    relaxed["containers"][0]["args"] = debian["containers"][0]["args"]
    assert relaxed == debian


@pytest.mark.parametrize("name", list(WORKERS))
def test_workers_have_exactly_the_exceptions_their_sandbox_needs(name: str) -> None:
    spec = pod_specs()[name]
    (container,) = spec["containers"]
    assert spec["hostUsers"] is False  # its own user namespace: required for an unmasked /proc
    assert container["securityContext"]["procMount"] == "Unmasked"
    assert container["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    profile = spec["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost"
    assert Path(profile["localhostProfile"]).name == SECCOMP_PROFILE.name  # the profile deploy/seccomp ships
    assert "SYS_ADMIN" not in container["securityContext"]["capabilities"].get("add", [])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    key_mount = mounts["/var/lib/mangos/keys"]
    assert key_mount["readOnly"] is True
    (key_volume,) = (v for v in spec["volumes"] if v["name"] == key_mount["name"])
    assert key_volume["secret"]["secretName"] == "mangos-builder-key"
    assert {i["path"] for i in key_volume["secret"]["items"]} == {"builder.key", "builder.pub", "coordinator.pub"}
    assert key_volume["secret"]["defaultMode"] == 0o440
    for other in ("mangos-coordinator", "mangos-web"):  # nobody else holds the private builder key
        items = [
            item["key"]
            for v in pod_specs()[other]["volumes"]
            if v.get("secret", {}).get("secretName") == "mangos-builder-key"
            for item in v["secret"]["items"]
        ]
        assert items == (["builder.pub"] if other == "mangos-coordinator" else []), other
    # The coordinator alone holds its task-signing key, where MANGOS_FARM_COORDINATOR_KEY_DIR points.
    coordinator = pod_specs()["mangos-coordinator"]
    secrets = {v["secret"]["secretName"]: v["secret"] for v in coordinator["volumes"] if "secret" in v}
    secret = secrets["mangos-coordinator-key"]
    assert secret["defaultMode"] == 0o440
    (c,) = coordinator["containers"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/mangos/coordinator")
    assert mount["readOnly"] is True
    config = objects("ConfigMap")["mangos-farm-settings"]
    assert config["data"]["MANGOS_FARM_COORDINATOR_KEY_DIR"] == mount["mountPath"]
    assert "mangos-coordinator-key" not in [v.get("secret", {}).get("secretName") for v in spec["volumes"]]


def keda_errors(docs: list[dict[str, Any]]) -> list[list[str]]:
    """Each document's errors against KEDA's CRD schemas (tests/deploy/keda/validate.cjs under node)."""
    node = require("node")
    if not (KEDA / "node_modules" / "@kubernetes-models" / "keda").is_dir():
        (pytest.fail if IN_CI else pytest.skip)("the KEDA schema package is not installed: run 'make setup'")
    done = subprocess.run(
        [node, str(KEDA / "validate.cjs")], input=json.dumps(docs), capture_output=True, text=True, check=True
    )
    found: list[list[str]] = json.loads(done.stdout)
    return found


def scaled_objects() -> list[dict[str, Any]]:
    found = list(objects("ScaledObject").values())
    assert found
    return found


def test_keda_objects_validate_against_keda_crd_schemas() -> None:
    keda = [doc for _, doc in manifests() if doc["apiVersion"].startswith("keda.sh/")]
    assert keda_errors(keda) == [[] for _ in keda]


@pytest.mark.parametrize("scaled", scaled_objects(), ids=lambda s: s["metadata"]["name"])
def test_keda_scales_a_worker_deployment_of_its_arch(scaled: dict[str, Any]) -> None:
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert spec["scaleTargetRef"]["name"] in WORKERS
    worker = objects("Deployment")[spec["scaleTargetRef"]["name"]]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    args = parse_cli(worker["spec"]["template"]["spec"]["containers"][0]["args"])
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/arch": args.arch}
    assert {t["type"] for t in spec["triggers"]} == {"prometheus"}  # its query and address: test_scaling.py

    # The HPA behavior KEDA passes through is checked with the Kubernetes autoscaling/v2 schema.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{([^{}]*)\})?")
_MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"\s*,?""")


def selectors(query: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Each series selector of ``query`` for a metric the farm exports: (name, {label: (operator, value)})."""
    found = []
    for match in _SELECTOR.finditer(query):
        name, body = match.group(1), match.group(2) or ""
        if name in METRICS:
            matchers = {m.group(1): (m.group(2), m.group(3)) for m in _MATCHER.finditer(body)}
            assert _MATCHER.sub("", body).strip() == "", f"unparsed matchers in {name}{{{body}}}"
            found.append((name, matchers))
    return found


def test_the_selector_reader_reads_matchers() -> None:
    got = selectors('sum(mangos_builds_ready_waiting{arch="amd64", class=~"deb.*"}) + vector(0) + mangos_runs_active')
    assert got == [
        ("mangos_builds_ready_waiting", {"arch": ("=", "amd64"), "class": ("=~", "deb.*")}),
        ("mangos_runs_active", {}),
    ]


def test_every_worker_class_has_one_scaled_object_whose_query_selects_that_class() -> None:
    """One ScaledObject per worker Deployment; its trigger counts only builds of the Deployment's arch and of its
    capability class: every series it reads that has an ``arch`` (a ``class``) label is selected with exactly
    that arch (class). A Debian build waiting grows the debian workers, never the default ones, and back."""
    by_target = {}
    for scaled in scaled_objects():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target not in by_target, f"two ScaledObjects scale {target}"
        by_target[target] = scaled
    assert set(by_target) == set(WORKERS)
    config = objects("ConfigMap")["mangos-farm-settings"]["data"]
    for name, cls in WORKERS.items():
        labels = objects("Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        arch = labels["mangos.farm/arch"]
        (trigger,) = by_target[name]["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        assert trigger["metadata"]["threshold"] == config["MANGOS_FARM_WORKERS"], name  # builds per worker
        assert {"mangos_builds_ready_waiting", "mangos_builds_in_flight"} <= metric_names(query), query
        found = selectors(query)
        assert {n for n, _ in found} == metric_names(query), query
        for metric, matchers in found:
            labelnames = METRICS[metric].labelnames
            assert set(matchers) <= set(labelnames), (name, metric, matchers)
            if "arch" in labelnames:
                assert matchers.get("arch") == ("=", arch), (name, metric, matchers)
            if "class" in labelnames:
                assert matchers.get("class") == ("=", cls), (name, metric, matchers)
        for series in ("mangos_builds_ready_waiting", "mangos_builds_in_flight"):
            assert (series, {"arch": ("=", arch), "class": ("=", cls)}) in found, query


def test_the_keda_schema_refuses_mistakes() -> None:
    """Wrong types and missing required fields are errors. (A CRD schema does not forbid unknown fields, the API
    server prunes them; the tests above read every field the farm relies on by its name.)"""
    scaled = scaled_objects()[0]
    number = copy.deepcopy(scaled)
    number["spec"]["triggers"][0]["metadata"]["threshold"] = 2  # KEDA's metadata values are strings
    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]["name"]
    replicas = copy.deepcopy(scaled)
    replicas["spec"]["maxReplicaCount"] = "16"
    no_type = copy.deepcopy(scaled)
    del no_type["spec"]["triggers"][0]["type"]
    errors = keda_errors([number, no_target, replicas, no_type])
    assert all(errors), errors
    assert "/spec/triggers/0/metadata/threshold" in errors[0][0]


def test_recipes_update_cronjob_runs_the_operators_loop_unprivileged() -> None:
    cron = objects("CronJob")["mangos-recipes-update"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = parse_cli(container["args"])
    assert (args.command, args.recipes_cmd, args.queue) == ("recipes", "update", True)
    assert container["envFrom"] == [{"configMapRef": {"name": "mangos-farm-settings"}}]
    assert {e["name"] for e in container["env"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == WORKER_UID
    for c in [*spec["initContainers"], container]:
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert args.dir.startswith(next(p for p, n in mounts.items() if n == "home") + "/")  # the recipes persist
    claim = volumes[mounts["/var/lib/mangos"]]["persistentVolumeClaim"]["claimName"]
    assert claim in objects("PersistentVolumeClaim")
    # the init container's fresh archive indexes are what the update reads (apt's lists directory)
    (init,) = spec["initContainers"]
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}["/var/lib/apt/lists"] == mounts[
        "/var/lib/apt/lists"
    ]
