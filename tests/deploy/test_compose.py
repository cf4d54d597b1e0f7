"""compose.yaml: valid against the Compose Specification, and consistent with the farm it starts.

There is no Docker engine here (and no `docker compose`), so the file is checked against the specification's
JSON schema: compose-spec/compose-spec schema/compose-spec.json, as vendored by the check-jsonschema package
(`check_jsonschema/builtin_schemas/vendor/compose-spec.json`, taken from SchemaStore's copy of it).
"""

from __future__ import annotations

import copy
import posixpath
import re
import tomllib
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from check_jsonschema.builtin_schemas import get_builtin_schema

from tests.deploy.common import (
    COMPOSE,
    ROOT,
    SECCOMP_PROFILE,
    load_yaml,
    parse_cli,
    setting_variables,
)

pytestmark = pytest.mark.integration

FARM_SERVICES = ("keys", "coordinator", "worker", "web", "cli")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def test_valid_against_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_is_strict() -> None:
    """The validation would catch a typo and a wrong type (so the test above is not vacuous)."""
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["securty_opt"] = ["apparmor=unconfined"]
    broken["services"]["redis"]["command"] = {"redis-server": "--appendonly"}
    errors = schema_errors(broken)
    assert any("securty_opt" in e for e in errors), errors
    assert any(e.startswith("$.services.redis.command") for e in errors), errors


def test_services() -> None:
    services = compose()["services"]
    assert set(services) == {
        "redis",
        "minio",
        "minio-setup",
        "keys",
        "coordinator",
        "worker",
        "web",
        "cli",
        "prometheus",
        "grafana",
    }
    for name in FARM_SERVICES:  # one image, built from the Containerfile
        assert services[name]["image"] == "mangos-farm:local"
        assert services[name]["build"] == {"context": ".", "dockerfile": "Containerfile"}
    assert "deploy" not in services["worker"] or "replicas" not in services["worker"]["deploy"]  # --scale works
    assert "container_name" not in services["worker"]  # a fixed name would forbid --scale
    assert "ports" not in services["worker"]  # a published port would collide between replicas


def test_redis_persists_with_an_append_only_file() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_the_bucket_the_store_uses_is_created() -> None:
    services = compose()["services"]
    store = urlsplit(environment(services["coordinator"])["MANGOS_FARM_STORE"])
    assert store.scheme == "s3"
    script = "\n".join(services["minio-setup"]["entrypoint"])
    assert re.search(rf"mc mb --ignore-existing \w+/{re.escape(store.netloc)}\b", script), script
    assert services["minio-setup"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("coordinator", "worker", "web", "cli"):
        assert services[name]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"


def test_farm_environment_names_real_settings_and_services() -> None:
    doc = compose()
    services = doc["services"]
    settings = setting_variables()
    for name in FARM_SERVICES:
        env = environment(services[name])
        used = {k for k in env if k.startswith("MANGOS_FARM_")}
        assert used <= settings, f"{name}: not farm settings: {sorted(used - settings)}"
        assert env["MANGOS_FARM_HOME"] == "/var/lib/mangos", name
    for name in ("coordinator", "worker", "web", "cli"):
        env = environment(services[name])
        assert env["MANGOS_FARM_BROKER"] == "redis://redis:6379/0"
        assert env["MANGOS_FARM_STORE"] == "s3://mangos/farm"
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        for url in (env["MANGOS_FARM_BROKER"], env["AWS_ENDPOINT_URL_S3"]):
            assert urlsplit(url).hostname in services, url


def test_commands_are_valid_mangos_farm_command_lines() -> None:
    """Every farm service's command parses with the real CLI parser (the image's entrypoint is mangos-farm)."""
    services = compose()["services"]
    expected = {"keys": "keys", "coordinator": "coordinator", "worker": "worker", "web": "serve", "cli": "status"}
    for name, command in expected.items():
        argv = services[name]["command"]
        assert isinstance(argv, list), f"{name}: give the command as a list (no shell splitting)"
        assert argv[0] == command
        parse_cli(argv)
    web = parse_cli(services["web"]["command"])
    assert (web.host, web.port) == ("0.0.0.0", 8080)  # serve's default, 127.0.0.1, is unreachable from outside
    assert "127.0.0.1:8080:8080" in services["web"]["ports"]  # ... and the host publishes it on loopback only


def test_builder_key_reaches_only_the_services_that_sign_or_check() -> None:
    services = compose()["services"]
    holders = {
        name for name, s in services.items() if any(str(v).startswith("builder-keys:") for v in s.get("volumes", []))
    }
    assert holders == {"keys", "worker", "cli"}
    assert "builder-keys:/var/lib/mangos/keys:ro" in services["worker"]["volumes"]
    assert "builder-keys:/var/lib/mangos/keys:ro" in services["cli"]["volumes"]
    assert services["keys"]["command"] == ["keys", "generate", "--if-missing"]
    for name in ("worker", "cli"):
        assert services[name]["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def test_coordinator_key_reaches_only_the_coordinator() -> None:
    """Workers run only tasks signed by the coordinator's key; they hold its public half (in builder-keys)."""
    services = compose()["services"]
    holders = {
        name for name, s in services.items() if any(str(v).startswith("coordinator-key:") for v in s.get("volumes", []))
    }
    assert holders == {"keys", "coordinator"}
    coordinator = services["coordinator"]
    assert "coordinator-key:/var/lib/mangos/coordinator:ro" in coordinator["volumes"]
    assert coordinator["environment"]["MANGOS_FARM_COORDINATOR_KEY_DIR"] == "/var/lib/mangos/coordinator"
    assert services["keys"]["environment"]["MANGOS_FARM_COORDINATOR_KEY_DIR"] == "/var/lib/mangos/coordinator"
    assert coordinator["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def test_worker_runs_with_the_minimum_privileges() -> None:
    """The exceptions bwrap needs, and nothing more (tests/deploy/test_privileges.py measures why)."""
    worker = compose()["services"]["worker"]
    assert worker["cap_drop"] == ["ALL"]
    assert "cap_add" not in worker
    assert not worker.get("privileged", False)
    assert "user" not in worker  # the image's unprivileged user
    assert sorted(worker["security_opt"]) == sorted(
        [
            "no-new-privileges:true",
            "seccomp=./deploy/seccomp/worker.json",
            "apparmor=unconfined",
            "systempaths=unconfined",
        ]
    )
    assert (ROOT / "deploy/seccomp/worker.json").resolve() == SECCOMP_PROFILE
    assert worker["read_only"] is True
    for name in ("coordinator", "web"):  # everything else gets no exception at all
        service = compose()["services"][name]
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]


def test_references_resolve() -> None:
    doc = compose()
    services = doc["services"]
    volumes = set(doc["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                if source == "./demo/git":  # made by `make demo-sources`
                    assert (ROOT / "demo" / "make_sources.py").is_file()
                else:
                    assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            elif ":" in str(volume):
                assert source in volumes, f"{name}: volume {source} is not declared"


def test_demo_repositories_are_where_the_plan_resolves_them_and_trusted_by_git() -> None:
    """The cli plans recipes from /srv/mangos/recipes; a relative `source.git` resolves against the recipe's
    directory, and workers clone from the same path. The host owns those repositories, not the container's user,
    so git must trust each of them by name (git 2.39 has no wildcard short of trusting every repository)."""
    doc = compose()
    services = doc["services"]
    recipes_dir = "/srv/mangos/recipes"
    assert f"./recipes:{recipes_dir}:ro" in services["cli"]["volumes"]
    repositories = set()
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        url = tomllib.loads(path.read_text())["source"]["git"]
        repositories.add(posixpath.normpath(posixpath.join(recipes_dir, url)))
    mounted = "./demo/git:/srv/mangos/demo/git:ro"
    assert all(r.startswith("/srv/mangos/demo/git/") for r in repositories), repositories
    content = doc["configs"]["demo-gitconfig"]["content"]
    trusted = set(re.findall(r"^\s*directory\s*=\s*(\S+)\s*$", content, flags=re.MULTILINE))
    assert trusted == repositories
    for name in ("worker", "cli"):
        assert mounted in services[name]["volumes"], name
        (config,) = services[name]["configs"]
        assert config["source"] == "demo-gitconfig"
        assert environment(services[name])["GIT_CONFIG_GLOBAL"] == config["target"], name
