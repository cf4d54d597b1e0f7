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

BENCHES = ["bench_overhead", "bench_sched", "bench_plan", "bench_s3", "bench_debian", "bench_image", "bench_archive"]


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
