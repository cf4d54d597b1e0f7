"""compose.yaml: valid against the Compose Specification, consistent with the farm it starts, and brought up for
real (the last test: podman and podman-compose, with compose.test.yaml's stand-ins for the upstream images).

The schema is compose-spec/compose-spec schema/compose-spec.json, as vendored by the check-jsonschema package
(`check_jsonschema/builtin_schemas/vendor/compose-spec.json`, taken from SchemaStore's copy of it).
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
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
from tests.deploy.podman import FARM_LOCAL_TAG, SERVICES_CONTAINERFILE, Podman, farm_tag, services_tag
from tests.lib.tools import IN_CI, require

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


def test_the_test_override_is_valid_and_sets_no_list_compose_yaml_sets() -> None:
    """compose.test.yaml is a valid Compose file whose services all exist in compose.yaml, and it sets no list-valued
    key that compose.yaml sets: podman-compose 1.0.3 appends to such lists where the specification replaces them,
    so the override would mean different things to the two."""
    override: dict[str, Any] = load_yaml(ROOT / "compose.test.yaml")
    assert schema_errors(override) == []
    base = compose()["services"]
    for name, service in override["services"].items():
        assert name in base, name
        for key, value in service.items():
            if (
                isinstance(value, list) and key != "volumes"
            ):  # podman-compose merges volumes by target, as the spec does
                assert key not in base[name], f"{name}.{key}: a list compose.yaml sets too"


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
        argv = keys_script(services)[0] if name == "keys" else services[name]["command"]
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
    assert keys_script(services)[0] == ["keys", "generate", "--if-missing"]
    for name in ("worker", "cli"):
        assert services[name]["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def keys_script(services: dict[str, Any]) -> list[list[str]]:
    """The `keys` service's shell script, one argv per line, `mangos-farm` (the image's entrypoint) dropped."""
    assert services["keys"]["entrypoint"] == ["/bin/sh", "-ec"]
    (script,) = services["keys"]["command"]
    lines = [shlex.split(line) for line in script.strip().splitlines()]
    return [argv[1:] if argv[0] == "mangos-farm" else argv for argv in lines]


def test_the_coordinator_verifies_results_with_the_builder_public_key_only() -> None:
    """The coordinator refuses a result whose provenance it cannot verify: its keys directory is the keyring
    volume, into which `keys` copies builder.pub and nothing else."""
    services = compose()["services"]
    assert "builder-keyring:/var/lib/mangos/keys:ro" in services["coordinator"]["volumes"]
    holders = {
        n for n, s in services.items() if any(str(v).startswith("builder-keyring:") for v in s.get("volumes", []))
    }
    assert holders == {"keys", "coordinator"}
    assert "builder-keyring:/var/lib/mangos/keyring" in services["keys"]["volumes"]
    copies = [argv for argv in keys_script(services) if argv[0] == "cp"]
    assert copies == [["cp", "/var/lib/mangos/keys/builder.pub", "/var/lib/mangos/keyring/builder.pub"]]


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


# --- The stack, brought up -------------------------------------------------------------------------------------------

PROJECT = "mangos-farm-test"
STEP_TIMEOUT = 120.0  # one podman-compose step, or a service becoming ready
REBUILD_TIMEOUT = 180.0


class Stack:
    """compose.yaml + compose.test.yaml under podman-compose, run in the network namespace ``netns`` (one of the
    test's own: no traffic of the stack leaves the machine, and its published ports cannot collide with the host's)."""

    def __init__(self, engine: Podman, work: Path, images: dict[str, str], netns: Path) -> None:
        self.netns = netns
        self.engine = engine
        self.work = work
        self.images = images

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.engine.env,
            "MANGOS_COMPOSE_BASE_IMAGE": self.images["base"],
            "MANGOS_COMPOSE_SERVICES_IMAGE": self.images["services"],
            "MANGOS_COMPOSE_TEST_DIR": str(self.work),
        }

    def compose(self, *argv: str, timeout: float = STEP_TIMEOUT) -> tuple[int, str]:
        """podman-compose ARGV in the namespace: (the exit code it reports for `run`, or its own; its output)."""
        files = ["-f", "compose.yaml", "-f", "compose.test.yaml"]
        cmd = ["nsenter", f"--net={self.netns}", "podman-compose", "-p", PROJECT, *files, *argv]
        try:
            done = subprocess.run(
                cmd,
                check=False,
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout)
            raise AssertionError(
                f"{' '.join(argv)}: no end within {timeout:.0f} s\n{output[-3000:]}\n{self.logs()}"
            ) from None
        with (self.work / "compose.log").open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n{done.stdout}\n")
        codes = re.findall(r"^exit code: (-?\d+)$", done.stdout, flags=re.MULTILINE)
        return (int(codes[-1]) if argv[0] == "run" and codes else done.returncode), done.stdout

    def cli(self, *argv: str, timeout: float = STEP_TIMEOUT) -> str:
        code, output = self.compose("run", "--rm", "--no-deps", "-T", "cli", *argv, timeout=timeout)
        assert code == 0, f"cli {' '.join(argv)} exited {code}:\n{output[-3000:]}\n{self.logs()}"
        return output

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def wait(self, what: str, check: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s\n{self.logs()}"
            time.sleep(0.5)

    def healthy(self, service: str) -> bool:
        return self.engine.run(["podman", "healthcheck", "run", self.container(service)], check=False).returncode == 0

    def exited_zero(self, *services: str) -> None:
        names = [self.container(s) for s in services]
        codes = self.engine.run(["podman", "wait", *names], timeout=STEP_TIMEOUT).stdout.split()
        assert codes == ["0"] * len(names), f"{services} exited {codes}\n{self.logs()}"

    def logs(self) -> str:
        ps = self.engine.run(["podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}"], check=False).stdout
        tails = []
        for name in ps.split("\n"):
            if name.startswith(PROJECT):
                out = self.engine.run(["podman", "logs", "--tail", "15", name.split()[0]], check=False)
                tails.append(f"--- {name}\n{out.stdout}")
        return ps + "\n".join(tails)

    def down(self) -> None:
        label = f"label=io.podman.compose.project={PROJECT}"  # `run` containers too, which `down` does not know
        self.engine.run(["podman", "rm", "-f", "-t", "2", "--filter", label], check=False)
        self.compose("down", "-v")
        self.engine.run(["podman", "network", "rm", "-f", f"{PROJECT}_default"], check=False)


@pytest.fixture
def engine(tmp_path: Path) -> Podman:
    if os.geteuid() != 0:  # rootful podman, and a network namespace of the test's own
        (pytest.fail if IN_CI else pytest.skip)("the compose stack test runs as root")
    for tool in ("podman", "podman-compose", "runc", "catatonit", "mmdebstrap", "nsenter", "ip"):
        require(tool)
    for helper in ("netavark", "aardvark-dns"):  # the network backend (containers.conf) and its DNS for service names
        if not Path("/usr/lib/podman", helper).exists():
            (pytest.fail if IN_CI else pytest.skip)(f"{helper} is not installed (make apt)")
    return Podman(tmp_path / "conf", tmp_path / "podman.log")


@pytest.fixture
def netns() -> Iterator[Path]:
    """A network namespace with only its loopback up, held by a process of this test (``/proc/PID/ns/net``)."""
    holder = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "up\n"
        yield Path(f"/proc/{holder.pid}/ns/net")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.timeout(300)
def test_the_stack_rebuilds_the_demo_recipes_and_serves_an_artifact(
    engine: Podman, netns: Path, tmp_path: Path
) -> None:
    """Up (images built locally, cached by input digest); `rebuild --wait` of the demo recipes by the cli service;
    `fetch` of greet's artifact (verified against the farm's builder key), which runs; down."""
    if not (ROOT / "demo" / "git" / "greet.git").is_dir():
        subprocess.run([sys.executable, "demo/make_sources.py", "demo/git"], cwd=ROOT, check=True)
    base, _ = engine.ensure_base(tmp_path)
    images = {"base": base, "farm": farm_tag(base), "services": services_tag(base)}
    engine.ensure_built({images["farm"]: ROOT / "Containerfile", images["services"]: SERVICES_CONTAINERFILE}, base)
    engine.tag(images["farm"], FARM_LOCAL_TAG)

    work = tmp_path / "stack"
    (work / "out").mkdir(parents=True)
    (work / "out").chmod(0o777)  # the cli runs as the image's user
    (work / "gitconfig").write_text(compose()["configs"]["demo-gitconfig"]["content"])
    (work / "demo-recipes").mkdir()
    for recipe in (ROOT / "recipes").glob("*.toml"):  # the demo's; each names its git source ../demo/git/NAME.git
        shutil.copy(recipe, work / "demo-recipes")
    stack = Stack(engine, work, images, netns)
    stack.down()  # what a killed run left
    try:
        # compose.yaml's depends_on conditions, which podman-compose 1.0.3 does not implement, played in order.
        stack.compose("up", "-d", "--no-build", "redis", "minio", "keys")
        stack.wait("minio healthy", lambda: stack.healthy("minio"))
        stack.wait("redis healthy", lambda: stack.healthy("redis"))
        stack.compose("up", "-d", "--no-build", "minio-setup")
        stack.exited_zero("keys", "minio-setup")
        stack.compose("up", "-d", "--no-build", "coordinator", "worker", "web")

        stack.cli("rebuild", "demo-recipes", "--wait", timeout=REBUILD_TIMEOUT)
        commit = tomllib.loads((ROOT / "recipes" / "greet.toml").read_text())["source"]["commit"]
        stack.cli("fetch", "--commit", commit, "--recipe", "greet", "-o", "/srv/mangos/out/greet")
        greet = work / "out" / "greet" / "greet"
        assert (work / "out" / "greet" / "greet.intoto.json").is_file()
        ran = subprocess.run([str(greet), "MANGOS"], capture_output=True, text=True, check=True)
        assert "MANGOS" in ran.stdout
    finally:
        stack.down()
