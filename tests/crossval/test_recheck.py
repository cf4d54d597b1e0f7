"""Recheck through the real build code: bubblewrap, libfaketime, diffoscope, a real store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from farm import metrics
from farm.build.variation import Variation
from farm.crossval.recheck import recheck_one
from farm.crossval.results import load_results, results_dir
from farm.store import open_store
from tests.conftest import require
from tests.crossval.helpers import make_org, request, source_repo

pytestmark = pytest.mark.integration


def test_date_embedding_build_is_caught_with_a_diffoscope_report(tmp_path: Path) -> None:
    require("bwrap")
    require("faketime")
    require("diffoscope")
    repo = tmp_path / "src"
    commit = source_repo(
        repo, {"README": "readme\n", "main.c": '#include <stdio.h>\nint main(void){puts("same");return 0;}\n'}
    )
    org = make_org(tmp_path, "alpha")
    stamp_req = request(
        repo, commit, "stamp", ['mkdir -p "$OUT/share" && date +%Y-%m-%d > "$OUT/share/built-on"'], ["share"]
    )
    steady_req = request(
        repo,
        commit,
        "steady",
        ['cc -O2 -o "$OUT/prog" main.c', 'echo "host $(hostname) uid $(id -u) jobs $JOBS" > /tmp/x'],
        ["prog"],
    )
    order_req = request(
        repo, commit, "order", ['for i in $(seq 1 30); do touch "f$i"; done; ls -f > "$OUT/listing"'], ["listing"]
    )
    stamp, steady, order = org.build(stamp_req), org.build(steady_req), org.build(order_req)
    ctx = replace(org.context(), variation=Variation())

    bad = recheck_one(stamp_req, stamp, ctx, org.settings)
    assert not bad.reproducible and bad.differing == ["share.tar"]
    assert bad.causes == ["timestamps"]
    report = bad.reports["share.tar"]
    store = open_store(org.settings.store_url)
    text = store.get_bytes(report["text"]).decode()
    assert "built-on" in text and stamp.outputs()["share.tar"] != bad.varied["share.tar"]
    assert b"<html" in store.get_bytes(report["html"]).lower()
    assert (results_dir(org.settings) / stamp.build_key / "share.tar.diffoscope.txt").read_text() == text

    shuffled = recheck_one(order_req, order, ctx, org.settings)
    assert not shuffled.reproducible and shuffled.causes == ["file order"], shuffled

    good = recheck_one(steady_req, steady, ctx, org.settings)
    assert good.reproducible and good.causes == [] and good.varied == steady.outputs()
    # Nothing a recheck built was published: the store still holds exactly the original records.
    assert store.get_record(stamp.build_key) == stamp
    assert {r.recipe: r.reproducible for r in load_results(org.settings)} == {
        "order": False,
        "stamp": False,
        "steady": True,
    }
    assert metrics.reproducibility.labels("all")._value.get() == pytest.approx(1 / 3)
    assert metrics.reproducibility.labels("steady")._value.get() == 1.0


def test_small_report_cap_and_timeout_are_honoured(tmp_path: Path) -> None:
    require("bwrap")
    require("faketime")
    require("diffoscope")
    repo = tmp_path / "src"
    commit = source_repo(repo, {"f": "x\n"})
    org = make_org(tmp_path, "alpha")
    req = request(
        repo,
        commit,
        "noisy",
        ['for i in $(seq 1 600); do date +%s%N; done > "$OUT/noise"'],
        ["noise"],
    )
    rec = org.build(req)
    ctx = replace(org.context(), variation=Variation())
    res = recheck_one(req, rec, ctx, org.settings, max_report_size=4000)
    text = (results_dir(org.settings) / rec.build_key / "noise.diffoscope.txt").read_text()
    assert len(text) < 4200 and "truncated" in text.lower()
    html = (results_dir(org.settings) / rec.build_key / "noise.diffoscope.html").read_bytes()
    assert len(html) < 200_000, len(html)
    assert not res.reproducible
    timed = recheck_one(req, rec, ctx, org.settings, diff_timeout=0.01)
    assert "stopped after" in timed.reports["noise"]["note"]
