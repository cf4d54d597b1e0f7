"""Capability routing in the coordinator: a build's class from what it needs, slots per (arch, class) from the live
workers' capabilities, dispatch to the class's queue, and why a build waits when no live worker can take it."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.build.capabilities import Probe
from farm.build.probes import allowed, kvm_probe_argv
from farm.coordinator import layout
from farm.coordinator.engine import Coordinator
from farm.coordinator.leases import LeaseBoard, WorkerInfo
from farm.coordinator.policy import Lane
from farm.coordinator.records import Job, Run, new_run_id
from farm.coordinator.slots import Slots
from farm.errors import E, ErrorGroup, FarmError
from farm.identity import build_key
from farm.recipes.model import parse
from farm.recipes.needs import class_of, classes, required, served
from tests.coordinator.harness import ENV, T0, CountingKV, FakeDispatcher, jobs, make_jobs, sent
from workers.app import build_queue, build_queues

pytestmark = pytest.mark.unit


def recipe_doc(**extra: object) -> dict[str, object]:
    return {
        "name": "hello",
        "version": "1.0",
        "outputs": ["bin/hello"],
        "source": {"git": "https://example.org/hello.git", "commit": "a" * 40},
        "build": {"steps": ["make"]},
    } | extra


def test_needs_are_scheduling_not_identity() -> None:
    """``needs`` never enters a recipe's content, so neither its build key: a recipe without it keeps the key it
    always had, and adding it rebuilds nothing."""
    plain, kvm = parse(recipe_doc(), Path("hello.toml")), parse(recipe_doc(needs=["kvm"]), Path("hello.toml"))
    assert kvm.needs == ("kvm",) and plain.needs == ()
    assert kvm.content() == plain.content() and "needs" not in plain.content()
    key = build_key(plain.content(), "a" * 40, "t" * 40, ENV, {})
    assert build_key(kvm.content(), "a" * 40, "t" * 40, ENV, {}) == key
    assert key == "28ddb432908a1f2ae455b634d8fd0a6d15aafbed325faca82fb70b0631d39672", "the key before needs existed"


def test_a_recipe_names_only_known_capabilities() -> None:
    with pytest.raises(ErrorGroup) as err:
        parse(recipe_doc(needs=["gpu"]), Path("hello.toml"))
    assert [(e.code, e.field) for e in err.value.errors] == [(E.RECIPE_VALUE, "needs")]
    assert "kvm" in err.value.errors[0].hint


def test_classes_of_needs() -> None:
    assert classes() == ["default", "debian", "kvm", "debian+kvm"]
    assert class_of([]) == "default" and class_of(["kvm", "debian"]) == "debian+kvm"
    assert required("debian", ()) == ("debian",) and required("script", ["kvm"]) == ("kvm",)
    assert served(["kvm"]) == ["default", "kvm"] and served([]) == ["default"]
    # the default queue keeps its name (a wire contract); the others are mangos.build.<arch>.<class>
    assert build_queues("amd64", ["debian"]) == ["mangos.build.amd64", "mangos.build.amd64.debian"]
    assert build_queue("amd64", "debian+kvm") == "mangos.build.amd64.debian+kvm"


def worker(name: str, caps: list[str], concurrency: int = 1, arch: str = "amd64") -> WorkerInfo:
    return WorkerInfo(name, arch, concurrency, "host", 1, T0, capabilities=caps)


def test_slots_are_shared_between_the_classes_a_worker_serves() -> None:
    fleet = [worker("plain", [], 2), worker("deb", ["debian"], 1), worker("all", ["debian", "kvm"], 1)]
    slots = Slots(fleet, {"plain": 1}, [("amd64", "debian")])
    assert [slots.capacity("amd64", c) for c in classes()] == [4, 2, 1, 1]
    # plain runs one build; the queued debian build is counted on the debian-only worker (fewest capabilities)
    assert [slots.free("amd64", c) for c in classes()] == [2, 1, 1, 1]
    assert slots.place("amd64", "kvm") and not slots.place("amd64", "debian+kvm")
    assert slots.free("amd64", "debian") == 0 and slots.free("amd64", "default") == 1
    assert slots.no_worker("arm64", "default") == "no worker for arch arm64"
    bare = Slots([worker("plain", [])], {}, [])
    assert bare.no_worker("amd64", "kvm") == "no worker with capability kvm"
    assert bare.no_worker("amd64", "debian+kvm") == "no worker with capabilities debian and kvm"
    split = Slots([worker("a", ["debian"]), worker("b", ["kvm"])], {}, [])
    assert split.no_worker("amd64", "debian+kvm") == "no worker with capabilities debian and kvm together"


def announce(kv: CountingKV, name: str, caps: list[str], concurrency: int = 1) -> None:
    LeaseBoard(kv, 4.0).announce(worker(name, caps, concurrency), ttl=3600)


def submit_needs(coord: Coordinator, needs: dict[str, list[str]]) -> Run:
    built: dict[str, Job] = make_jobs({n: [] for n in needs})
    for name, job in built.items():
        job.needs = needs[name]
    run = Run(new_run_id(), Lane.REBUILD, "amd64", ENV, False, T0, list(needs))
    coord.runs.insert(run, built)
    return run


def test_a_build_needing_a_capability_waits_for_a_worker_with_it(
    kv: CountingKV, disp: FakeDispatcher, coord: Coordinator
) -> None:
    announce(kv, "plain", [], concurrency=2)
    run = submit_needs(coord, {"vm": ["kvm"], "c": [], "deb": ["debian"]})
    assert kv.zcard(layout.ready_key("amd64", "kvm", "rebuild", run.id)) == 1, "a ready index per class"
    coord.tick(T0 + 1)
    assert disp.names() == ["c"], "only the build that needs nothing has a worker"
    assert disp.classes[sent(disp, "c")[1]] == "default"
    found = jobs(coord, run, T0 + 1)
    both = "debian builds: no worker with capability debian; kvm builds: no worker with capability kvm"
    assert found["vm"].why == found["deb"].why == both
    announce(kv, "vm-host", ["kvm"])
    coord.tick(T0 + 20)  # the registry is looked at again
    assert disp.names() == ["c", "vm"]
    assert disp.classes[sent(disp, "vm")[1]] == "kvm"
    assert jobs(coord, run, T0 + 20)["deb"].why == "no worker with capability debian"
    announce(kv, "builder", ["debian"])
    coord.tick(T0 + 40)
    assert disp.names() == ["c", "vm", "deb"] and disp.classes[sent(disp, "deb")[1]] == "debian"


def test_a_capable_worker_is_not_counted_twice(kv: CountingKV, disp: FakeDispatcher, coord: Coordinator) -> None:
    """One worker with kvm and one slot: a default build and a kvm build compete for that one slot."""
    announce(kv, "vm-host", ["kvm"])
    run = submit_needs(coord, {"vm": ["kvm"], "c": []})
    coord.tick(T0 + 1)
    assert len(disp.sent) == 1
    waiting = [n for n, j in jobs(coord, run, T0 + 1).items() if j.state.value == "waiting"]
    assert len(waiting) == 1 and "slots busy" in jobs(coord, run, T0 + 1)[waiting[0]].why


def probe(cap: str, ok: bool) -> Probe:
    return Probe(cap, ok, "" if ok else "it failed", None if ok else FarmError(E.WORKER, "x", hint="do y"))


def test_a_worker_can_only_narrow_what_its_probes_found() -> None:
    found = {"debian": probe("debian", True), "kvm": probe("kvm", False)}
    assert allowed(found, None) == ["debian"]
    assert allowed(found, ["debian"]) == ["debian"] and allowed({}, []) == []
    with pytest.raises(FarmError) as err:
        allowed(found, ["kvm"])
    assert err.value.code == E.WORKER_CAPABILITY and err.value.hint == "do y" and "it failed" in err.value.message
    with pytest.raises(FarmError) as err:
        allowed(found, ["gpu"])
    assert err.value.code == E.WORKER_CAPABILITY


def test_the_kvm_probe_starts_the_farm_s_machine() -> None:
    argv = kvm_probe_argv("x86_64")
    assert argv[:5] == ["qemu-system-x86_64", "-machine", "q35,smm=on", "-accel", "kvm"] and "-S" in argv
