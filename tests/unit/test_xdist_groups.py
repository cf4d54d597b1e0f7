"""make test's split over xdist workers (tests/lib/xdist_groups.py): modules that share an expensive fixture are one
group, whatever the order."""

from __future__ import annotations

import itertools

import pytest

from tests.lib.xdist_groups import FIRST, SHARED, group_of

pytestmark = pytest.mark.unit


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


def test_every_shared_group_is_sent_first_or_named() -> None:
    assert set(FIRST) <= set(SHARED.values()) | {"kernel"}
