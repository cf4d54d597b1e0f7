"""Every benchmark runs at its smallest size, as ``python -m bench.NAME ... --json`` from the repository root, and
reports the figures it exists for, each against a baseline measured in the same run. The timings themselves are
not checked (they depend on the machine); what is checked is that the benchmark still runs to its report.

bench_debian runs ``--dry-run`` (set-up only: the Debian environment alone takes minutes) and bench_image
``--check-inputs`` (set-up and the input check only: a full image build takes minutes).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lib.cli import REPO, clean_env
from tests.lib.tools import require

BENCHES = [
    "bench_overhead", "bench_sched", "bench_plan", "bench_s3", "bench_debian", "bench_image", "bench_archive",
    "bench_makespan",
]  # fmt: skip


def bench(name: str, *args: str, ok_codes: tuple[int, ...] = (0,), timeout: float = 120) -> dict[str, Any]:
    """Run ``python -m bench.NAME ARGS --json`` from the repository root; its JSON report."""
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args, "--json"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode in ok_codes, f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.mark.unit
@pytest.mark.parametrize("name", BENCHES)
def test_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(f"bench.{name}").main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m bench.{name}"), out
    assert "--json" in out


@pytest.mark.e2e
def test_overhead() -> None:
    for tool in ("git", "bwrap", "redis-server"):
        require(tool)
    r = bench("bench_overhead", "--builds", "1", "--fleets", "1x1", "--baseline-runs", "3", "--poll", "0.2")
    (fleet,) = r["fleets"]
    assert fleet["shape"] == "1x1" and fleet["builds"] == 1
    segments = {s["name"]: s for s in fleet["segments"]}
    assert positive(segments["total: dispatch -> noticed"]["median_ms"])
    assert positive(r["median_total_ms"]) and isinstance(r["meets_target"], bool)
    assert any(b["name"].startswith("Celery no-op") for b in r["baselines"])
    assert r["execute_build_in_process"][0]["n"] == 1
    assert set(r["ratios"]) == {
        "total / Celery no-op round trip",
        "total / execute_build in process",
        "execute_build in process / farm bwrap of true",
    }
    assert all(positive(v) for v in r["ratios"].values())
    assert positive(r["redis_commands_per_build"]) and positive(r["broker_commands_per_build"])
    assert set(fleet["state_commands"]["by_connection"]) >= {"coordinator", "w1"}  # named, so attributed
    assert {"celery_redis: dispatch -> start", "  limits (under limits - bare)"} <= set(r["overhead_split_ms"])


@pytest.mark.e2e
def test_sched() -> None:
    for tool in ("git", "bwrap", "redis-server"):
        require(tool)
    args = ("--seeds", "2", "--builds", "12", "--slots", "2", "--concurrency", "2", "--time-scale", "0.1")
    r = bench("bench_sched", *args, "--poll", "0.2")
    assert [s["seed"] for s in r["seeds"]] == [r["args"]["seed"], r["args"]["seed"] + 1]
    for s in r["seeds"]:
        assert s["dag"]["builds"] == 12 and positive(s["lower_bound_s"])
        assert positive(s["measured"]["makespan_s"]) and s["measured"]["registered_slots"] == 2
        assert s["policy_ratio"] >= 1.0  # no schedule beats the lower bound
        assert any("measured mean slot overhead" in k for k in s["simulated"])
    assert positive(r["ratio"]) and r["worst_ratio"] >= r["ratio"] and isinstance(r["meets_target"], bool)
    assert set(r["summary"]) == {"policy_sim", "policy_sim_plus_measured_overhead", "measured"}


@pytest.mark.e2e
def test_plan() -> None:
    for tool in ("git", "bwrap"):
        require(tool)
    r = bench("bench_plan", "--recipes", "3", "--workers", "1", "--repeat", "1", "--cli-repeat", "1")
    assert r["build"]["real_build"]["complete"] is True, r["build"]
    for key in ("plan_cold", "plan_warm", "cached_rebuild_cli", "cached_rebuild_inproc", "python_startup", "tomllib"):
        assert positive(r["timings"][key]["median"]), key
    assert positive(r["cached_rebuild_median"]) and isinstance(r["meets_target"], bool)
    assert len(r["ratios"]) == 4 and all(positive(v) for v in r["ratios"].values())


@pytest.mark.e2e
def test_s3() -> None:
    r = bench("bench_s3", "--size-mib", "1", "--repeat", "1", ok_codes=(0, 1))  # 1: below target
    for key in ("ratio_upload", "ratio_download", "ratio_upload_best", "ratio_download_best"):
        assert positive(r[key]), key
    assert set(r["best_mib_per_s"]) == {"store_up", "store_down", "boto3_up", "boto3_down"}


@pytest.mark.e2e
def test_debian_dry_run() -> None:
    r = bench("bench_debian", "--dry-run")
    assert r["dry_run"] is True and "hello" in r["recipes"]
    assert r["environment_build_s"] is None and r["builds"] == []
    assert "ratio_set_to_environment" in r


@pytest.mark.e2e
def test_image_check_inputs(tmp_path: Path) -> None:
    require("dpkg-deb")
    r = bench("bench_image", "--home", str(tmp_path / "home"), "--check-inputs")
    assert r["check_inputs"]["packages"] > 0 and positive(r["check_inputs"]["seconds"])
    assert r["total_seconds"] is None and "ratio_build_to_input_check" in r
    assert (tmp_path / "home" / "release" / "verity.key").is_file()  # the set-up made the release keys


@pytest.mark.e2e
def test_archive() -> None:
    from tests.integration.apt_sources import require_deb_src

    require_deb_src("bwrap", "redis-server")
    # Builds of 0.5 s keep the 40-build amd64 run busy past the first phase, so the second still has work to send.
    args = ["--limit", "40", "--dispatches", "6", "--workers", "1", "--concurrency", "2", "--arches", "amd64,arm64"]
    args += ["--sleep", "0.5"]
    r = bench("bench_archive", *args, "--phase-timeout", "60", ok_codes=(0, 1))  # 1: a target missed
    assert r["graph"]["sources"] == 40 and r["plan"]["builds"] == 40 and r["pending"]["first"] == 40
    assert r["dispatch"]["first"]["reached"] and r["dispatch"]["second"]["reached"]
    for key in ("plan_s", "submit_s", "dispatch_p99_ms_35k", "coordinator_rss_bytes", "state_redis_commands_per_build"):
        assert positive(r["figures"][key]), key
    assert r["cancel"]["dispatched_after_cancel"] <= r["fleet"]["slots"]  # at most a tick begun before it
    assert {run["status"] for run in r["cancel"]["runs"].values()} == {"cancelled"}


def _makespan_fixture(root: Path) -> tuple[Path, Path]:
    """Five script recipes (a -> b -> c, d, e <- a, d) and a farm home whose store holds a's build under the key the
    plan computes (measured) and b's under another key (an earlier build); c and e have no record, d's recipe carries
    an "Estimated" comment. No coordinator state: no attempts."""
    from farm.coordinator.planning import plan_recipes
    from farm.settings import Settings
    from farm.store.base import Artifact, BuildRecord
    from tests.lib.git import make_repo
    from tests.lib.recipes import write_recipe

    commit = make_repo(root / "repo")
    recipes, home = root / "recipes", root / "home"
    for name, deps in {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["a", "d"]}.items():
        write_recipe(recipes, name, git_url=str(root / "repo"), commit=commit, steps=["true"], depends=deps)
    path = recipes / "d.toml"
    path.write_text("# Estimated 2-4 min on 2 cores with its trims.\n" + path.read_text())
    plan, store = plan_recipes(recipes, Settings().with_home(home))

    def record(name: str, key: str, seconds: int) -> None:
        b = plan.builds[name]
        blob = store.put_bytes(f"{name} {key}".encode())
        art = Artifact(name, blob, len(f"{name} {key}"))
        end = f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"
        store.put_record(BuildRecord(
            key, name, "1.0", "0" * 64, str(root / "repo"), commit, b.source.tree, b.environment or "host",
            (art,), blob, blob, "test", "2026-01-01T00:00:00Z", end,
        ))  # fmt: skip

    assert plan.builds["a"].key is not None
    record("a", plan.builds["a"].key, 100)
    record("b", "b" * 64, 200)
    return recipes, home


@pytest.mark.e2e
def test_makespan(tmp_path: Path) -> None:
    recipes, home = _makespan_fixture(tmp_path)
    args = ["--home", str(home), "--slots", "1,2,16", "--estimate", "c=60", "--hours", "0.1"]
    r = bench("bench_makespan", str(recipes), *args, ok_codes=(0, 1))
    rows = {b["name"]: b for b in r["builds"]}
    assert [rows[n]["source"] for n in "abcde"] == ["measured", "measured (earlier build)", *["estimated"] * 3]
    assert [rows[n]["seconds"] for n in "abcde"] == [100, 200, 60, 180, 150]  # e: median of a and b
    assert [rows[n]["estimated"] for n in "abcde"] == [False, False, True, True, True]
    assert "--estimate" in rows["c"]["note"] and "comment" in rows["d"]["note"] and "median" in rows["e"]["note"]
    assert r["durations"]["by_source"] == {"measured": 1, "measured (earlier build)": 1, "estimated": 3}
    one, two, sixteen = r["table"]
    assert [t["slots"] for t in r["table"]] == [1, 2, 16]
    assert one["makespan_s"] == one["work_s"] == 690 and one["ratio"] == 1.0
    assert sixteen["critical_path_s"] == 360 and sixteen["makespan_s"] == 360  # a -> b -> c
    assert all(t["ratio"] >= 1.0 and t["makespan_s"] >= t["bound_s"] for t in r["table"])
    assert two["makespan_s"] == 360  # a, then b and d side by side, then c and e
    assert r["within"]["slots"] == 2 and r["within"]["saturation_slots"] == 2  # 0.1 h = 360 s
    assert r["within"]["critical_path_builds"] == ["a", "b", "c"]
    assert r["ratio"] == sixteen["ratio"] and r["meets_target"] is True


@pytest.mark.e2e
def test_makespan_floors(tmp_path: Path) -> None:
    """An unfinished attempt raises an estimate only as ``floor`` says: a timeout by default, any with ``all``."""
    from bench._makespan_data import Attempt, durations
    from farm.coordinator.planning import plan_recipes
    from farm.settings import Settings

    recipes, home = _makespan_fixture(tmp_path)
    plan, store = plan_recipes(recipes, Settings().with_home(home))
    attempts = {
        "a": Attempt(900, "timeout", "r0"),
        "c": Attempt(500, "timeout", "r1"),
        "e": Attempt(400, "cancelled", "r2"),
    }

    def seconds(floor: str) -> list[float]:
        rows = durations(plan, store, estimates={"c": 60}, attempts=attempts, floor=floor)
        return [rows[n].seconds for n in "ace"]

    assert seconds("timeout") == [100, 500, 150]  # a measured: never raised
    assert seconds("all") == [100, 500, 400]
    assert seconds("none") == [100, 60, 150]
