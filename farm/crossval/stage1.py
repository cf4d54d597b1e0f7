"""The self-hosting check's verdict: a recipe's stage-1 .debs against its stage-0 .debs (:mod:`farm.coordinator.stage`).

``equal`` when every .deb of both builds is byte-identical (the .buildinfo files are left out: they list the
build-dependencies installed, which is exactly what stage 1 changes); ``different`` otherwise, each differing file
named with both digests (or the side it is missing from) and, where diffoscope is available, its report stored in
the store with the first changed lines (:func:`farm.crossval.diffreport.diff`); ``failed`` when stage 1 could not be
built or stage 0 is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm.coordinator.stage import Stage1
from farm.crossval.diffreport import DEFAULT_DIFF_TIMEOUT, DEFAULT_MAX_REPORT, diff
from farm.store import BuildRecord, Store

EQUAL, DIFFERENT, FAILED = "equal", "different", "failed"
EXCERPT_LINES = 12


def compare_debs(stage0: Mapping[str, str], stage1: Mapping[str, str]) -> list[dict[str, Any]]:
    """The .debs that are not byte-identical (by digest) between two builds' outputs, each with both digests
    (None on the side that lacks the file), sorted by name. Empty: equal."""
    names = sorted({n for n in (*stage0, *stage1) if n.endswith(".deb")})
    return [
        {"file": n, "stage0": stage0.get(n), "stage1": stage1.get(n)} for n in names if stage0.get(n) != stage1.get(n)
    ]


def excerpt(report: str, lines: int = EXCERPT_LINES) -> list[str]:
    """The first changed lines of a diffoscope text report (its ``-``/``+`` lines, tree drawing kept)."""
    changed = [ln for ln in report.splitlines() if ln.lstrip("│├└┄─╎ ").startswith(("-", "+"))]
    return [ln for ln in changed if not ln.lstrip("│├└┄─╎ ").startswith(("---", "+++"))][:lines]


def explain(
    differences: list[dict[str, Any]], store: Store, dest: Path, *, timeout: float = DEFAULT_DIFF_TIMEOUT
) -> None:
    """Add diffoscope's report (stored digests) and its first changed lines to each file both builds made."""
    if shutil.which("diffoscope") is None:
        for d in differences:
            d["report"] = {"note": "diffoscope is not installed: no report"}
        return
    for d in differences:
        if d["stage0"] and d["stage1"]:
            report, stored = diff(
                store, d["file"], (d["stage0"], d["stage1"]), dest, max_report_size=DEFAULT_MAX_REPORT, timeout=timeout
            )
            d["report"], d["excerpt"] = stored, excerpt(report)


def verdict(
    stage: Stage1,
    stage1: BuildRecord | None,
    error: Mapping[str, Any] | None,
    store: Store | None = None,
    dest: Path | None = None,
) -> dict[str, Any]:
    """The per-recipe entry of ``rebuild --stage 1 --json``: ``{recipe, depends_on_farm, outcome, differences, ...}``.
    With ``store`` and ``dest``, differing .debs are explained by diffoscope."""
    build = stage.build
    entry: dict[str, Any] = {
        "recipe": stage.recipe,
        "depends_on_farm": list(stage.depends_on_farm),
        "stage0_key": stage.stage0.build_key if stage.stage0 else None,
        "stage1_key": build.key if build else None,
        "dropped_pins": list(stage.dropped_pins),
        "differences": [],
        "error": None,
    }
    if stage.error is not None or stage.stage0 is None or stage1 is None:
        err = stage.error.to_json() if stage.error is not None else dict(error or {"message": "stage 1 was not built"})
        return entry | {"outcome": FAILED, "error": err}
    differences = compare_debs(stage.stage0.outputs(), stage1.outputs())
    if differences and store is not None and dest is not None:
        explain(differences, store, dest / stage.recipe)
    return entry | {"outcome": DIFFERENT if differences else EQUAL, "differences": differences}
