"""The pure parts of rechecking on a fleet: the task payload, who built what, which worker rechecks it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from farm.build import BuildRequest, DependencyInput
from farm.build.variation import Variation
from farm.coordinator.runs import Job, State
from farm.crossval.dispatch import choose_worker, original_workers, recheck_payload, recheck_queue, variation_from_json
from farm.crossval.results import RecheckResult, load_results, save_result
from farm.settings import Settings
from farm.store import BuildRecord, open_store
from farm.store.base import Artifact

pytestmark = pytest.mark.unit


def _job(name: str, key: str | None, worker: str | None, state: State, finished: float | None = None) -> Job:
    return Job(name, "1", {}, "r", "u", "c", "t", [], 0.0, key=key, state=state, worker=worker, finished_at=finished)


def test_variation_survives_the_task_message() -> None:
    for v in (Variation(), Variation.unvaried(), Variation(umask=0o077, tz="UTC", file_order=False)):
        assert variation_from_json(v.to_json()) == v
    assert Variation().to_json()["umask"] == "0002"


def test_payload_carries_request_record_variation_and_the_original_builder() -> None:
    req = BuildRequest("k" * 64, {"name": "greet"}, "recipes/greet.toml", "file:///g", "t", "e",
                       (DependencyInput("libgreet", "d" * 64, {"libgreet.tar": "sha256:1"}),))  # fmt: skip
    record = BuildRecord("k" * 64, "greet", "1", "rd", "u", "c", "t", "e", (Artifact("greet.tar", "sha256:2", 3),),
                         "p", "l", "mangos-farm@h", "s", "f")  # fmt: skip
    payload = recheck_payload(req, record, Variation(), original="w1@fleet", max_report_size=10, diff_timeout=5.0)
    assert BuildRequest.from_json(payload["request"]) == req
    assert BuildRecord.from_json(payload["record"]) == record
    assert variation_from_json(payload["variation"]) == Variation()
    assert (payload["original"], payload["max_report_size"], payload["diff_timeout"]) == ("w1@fleet", 10, 5.0)


def test_original_worker_is_the_latest_builder_of_each_key() -> None:
    jobs = [
        _job("a", "ka", "w1", State.BUILT, 10.0),
        _job("a", "ka", "w2", State.BUILT, 20.0),  # rebuilt later (forced) by w2
        _job("b", "kb", None, State.CACHED),  # cached: built by no worker of this run
        _job("c", "kc", "w1", State.FAILED, 5.0),  # failed: published nothing
        _job("d", None, "w1", State.BUILT, 1.0),
    ]
    assert original_workers(jobs) == {"ka": "w2"}


def test_recheck_goes_to_the_least_loaded_other_worker() -> None:
    assert choose_worker("w1", ["w1", "w2", "w3"], {}) == "w2"
    assert choose_worker("w1", ["w1", "w2", "w3"], {"w2": 1}) == "w3"
    assert choose_worker("w2", ["w1", "w2", "w3"], {"w1": 2, "w3": 1}) == "w3"
    assert choose_worker("w1", ["w1"], {}) is None  # alone: any worker (the shared queue)
    assert choose_worker("mangos-farm@host", ["w1"], {}) == "w1"  # built elsewhere (record.builder only)
    assert recheck_queue("w1@fleet") == "mangos.recheck.w1@fleet"


def test_results_saved_before_fleet_rechecks_still_load() -> None:
    old: dict[str, Any] = {
        "recipe": "a", "build_key": "k", "reproducible": True, "outputs": {}, "varied": {}, "differing": [],
        "causes": [], "reports": {}, "variation": {}, "checked": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    result = RecheckResult.from_json(old)
    assert (result.worker, result.original) == ("", "")
    assert RecheckResult.from_json(result.to_json()) == result


@pytest.mark.integration
def test_a_fleet_result_is_saved_here_with_its_diffoscope_reports_from_the_store(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    (tmp_path / "r.txt").write_text("--- a\n+++ b\n-2026\n+2027\n")
    (tmp_path / "r.html").write_text("<html>report</html>")
    text, html = store.put_file(tmp_path / "r.txt").digest, store.put_file(tmp_path / "r.html").digest
    result = RecheckResult(
        "stamp", "k" * 64, False, {"a.tar": "sha256:1"}, {"a.tar": "sha256:2"}, ["a.tar"], ["timestamps"],
        {"a.tar": {"text": text, "html": html, "note": ""}}, Variation().to_json(), "2026-01-01T00:00:00Z",
        worker="w2@fleet", original="w1@fleet",
    )  # fmt: skip
    settings = Settings(home=tmp_path / "cli")
    dest = save_result(settings, store, result)
    assert (dest / "a.tar.diffoscope.txt").read_text() == (tmp_path / "r.txt").read_text()
    assert (dest / "a.tar.diffoscope.html").read_text() == "<html>report</html>"
    assert load_results(settings) == [result]
