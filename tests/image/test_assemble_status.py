"""The image build's live status and its one-build-per-home guard."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from farm.cli.image import stage_status
from farm.errors import FarmError
from farm.image.assemble import Stages, _exclusive

pytestmark = pytest.mark.unit


def test_stages_report_start_and_end_to_the_watcher() -> None:
    seen: list[tuple[str, float | None]] = []
    stages = Stages(lambda name, seconds: seen.append((name, seconds)))
    with stages("inputs"):
        pass
    with stages("erofs"):
        pass
    assert [(n, s is None) for n, s in seen] == [("inputs", True), ("inputs", False), ("erofs", True), ("erofs", False)]
    assert seen[1][1] == stages.times["inputs"] and set(stages.times) == {"inputs", "erofs"}


def test_a_failing_stage_is_not_reported_done() -> None:
    seen: list[tuple[str, float | None]] = []
    stages = Stages(lambda name, seconds: seen.append((name, seconds)))
    with pytest.raises(RuntimeError), stages("uki"):
        raise RuntimeError("dracut failed")
    assert seen == [("uki", None)] and "uki" not in stages.times


def test_status_lines_name_each_stage_and_its_time() -> None:
    out = io.StringIO()
    show = stage_status(out)
    show("rootfs", None)
    show("rootfs", 12.34)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("rootfs ...") and lines[1].endswith("rootfs done in 12.3s")


def test_a_second_image_build_in_the_same_home_is_refused_while_one_runs(tmp_path: Path) -> None:
    work = tmp_path / "work" / "image"
    with _exclusive(work):
        with pytest.raises(FarmError) as exc, _exclusive(work):
            pass
        assert exc.value.code == "E-IMAGE-BUILD" and "another image build" in exc.value.message
    with _exclusive(work):  # released when the first build ends
        pass
