"""make test's split over xdist workers (tests/lib/xdist_groups.py): modules that share an expensive fixture are one
group, whatever the order."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lib.xdist_groups import FIRST, SHARED, group_of, read_groups, write_groups

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_modules_sharing_a_fixture_group_is_one_group_and_others_stay_alone() -> None:
    modules = {
        "tests/e2e/test_a.py": {"image"},
        "tests/e2e/test_b.py": {"image", "demo"},  # links demo to image
        "tests/e2e/test_c.py": {"demo"},
        "tests/unit/test_d.py": set(),
        "tests/integration/test_e.py": {"env"},
    }
    expected = {
        "tests/e2e/test_a.py": "image",  # a FIRST name names the merged group
        "tests/e2e/test_b.py": "image",
        "tests/e2e/test_c.py": "image",
        "tests/unit/test_d.py": "tests/unit/test_d.py",
        "tests/integration/test_e.py": "env",
    }
    for order in itertools.permutations(modules):
        assert group_of({m: modules[m] for m in order}) == expected, order


@pytest.mark.unit
def test_every_shared_group_is_sent_first_or_named() -> None:
    assert set(FIRST) <= set(SHARED.values()) | {"kernel"}


@pytest.mark.unit
def test_write_then_read_the_groups_map(tmp_path: Path) -> None:
    worker = tmp_path / "popen-gw1"
    worker.mkdir()
    write_groups(worker, {"tests/b.py": "image", "tests/a.py": "tests/a.py"})
    assert read_groups(tmp_path) == {"tests/a.py": "tests/a.py", "tests/b.py": "image"}
    assert read_groups(worker) == {}  # not there: the controller falls back to modules


CONFTEST = """\
import os, pytest
from pathlib import Path
from tests.lib import xdist_groups

@pytest.fixture(scope="session")
def demo_farm():
    return os.getpid()

def pytest_collection_modifyitems(config, items):
    group = xdist_groups.assign(items)
    if hasattr(config, "workerinput"):
        xdist_groups.write_groups(Path(config.option.basetemp), group)

def pytest_xdist_make_scheduler(config, log):
    return xdist_groups.GroupScheduling(config, log)
"""
MODULE = """\
import os, pytest
@pytest.mark.parametrize("i", range(4))
def test_it(i, {fixture}):
    with open(os.environ["SEEN"], "a") as fh:
        fh.write(f"{{__name__}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")
"""


@pytest.mark.integration
def test_two_xdist_workers_keep_a_module_and_a_shared_fixture_on_one_worker(tmp_path: Path) -> None:
    """A real ``pytest -n 2`` run: the two modules using ``demo_farm`` share a worker, no module is split."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for name, fixture in (("test_a", "demo_farm"), ("test_b", "demo_farm"), ("test_c", "tmp_path"),
                          ("test_d", "tmp_path")):  # fmt: skip  # by modules alone, a and b would go apart
        (suite / f"{name}.py").write_text(MODULE.format(fixture=fixture))
    seen = tmp_path / "seen"
    env = {**os.environ, "SEEN": str(seen), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder", "-q",
            "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'tmp'}", f"--rootdir={suite}", str(suite)]  # fmt: skip
    done = subprocess.run(argv, env=env, cwd=suite, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers: dict[str, set[str]] = {}
    for line in seen.read_text().splitlines():
        module, worker = line.split()
        workers.setdefault(module, set()).add(worker)
    assert all(len(w) == 1 for w in workers.values()), workers
    assert workers["test_a"] == workers["test_b"], workers
    assert len(set().union(*workers.values())) == 2, workers  # both workers had work
