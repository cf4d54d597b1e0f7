"""This organization's attestation log: kept under ``$MANGOS_FARM_HOME/crossval/log``, filled from the store's
build records (each with its signed provenance), signed, and published to a directory or s3://, with the rebuild
attestations of its rechecks beside it.

The log only ever grows: a build record already logged (same build key) is not logged again, and a second,
different build of an inputs key already logged is not logged either (the first one is what peers saw).
"""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path

from farm.crossval import rebuilds, remote
from farm.crossval.log import ENTRIES, HEAD, InputsKey, Log
from farm.errors import E, FarmError, StoreError
from farm.log import step
from farm.settings import Settings
from farm.store import BuildRecord, Store, open_store
from farm.store.local import LocalStore
from farm.trust.keys import BuilderKey, load_builder
from farm.trust.provenance import verify_envelope

log = logging.getLogger(__name__)


def log_dir(settings: Settings) -> Path:
    return settings.home / "crossval" / "log"


def all_records(store: Store) -> list[BuildRecord]:
    """Every build record in the store, in a stable order (recipe, finish time, key)."""
    from farm.store.s3 import S3Store  # here, not at the top: it loads boto3, which a local store never needs

    keys: set[str] = set()
    if isinstance(store, LocalStore):
        index = store.root / "index" / "recipe"
        keys = {m.name for d in index.iterdir() if d.is_dir() for m in d.iterdir()} if index.is_dir() else set()
    elif isinstance(store, S3Store):
        with store._errors():
            keys = {k.rsplit("/", 1)[-1] for k in store._list_keys(f"{store.prefix}index/recipe/")}
    records = [r for r in (store.get_record(k) for k in sorted(keys)) if r is not None]
    return sorted(records, key=lambda r: (r.recipe, r.finished, r.build_key))


def sync(settings: Settings, store: Store | None = None, key: BuilderKey | None = None) -> Log:
    """Append every build record not yet logged (with its verified provenance) and re-sign the head."""
    store = store or open_store(settings.store_url)
    key = key or load_builder(settings.keys_dir)
    root = log_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:  # one writer at a time: concurrent publishes must not interleave
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _sync_locked(settings, store, key, Log.open(root))


def _sync_locked(settings: Settings, store: Store, key: BuilderKey, own: Log) -> Log:
    logged_builds = own.build_keys()
    logged_inputs = set(own.by_key())
    added = 0
    with step("log-sync", log, entries=len(own.entries)):
        for record in all_records(store):
            if record.build_key in logged_builds:
                continue
            envelope = json.loads(store.get_bytes(record.provenance))
            try:
                # Peers check every entry against this organization's one published key: log only what it signed.
                verified = verify_envelope(envelope, [key.public])
            except FarmError as exc:
                log.warning("not logging %s (%s): %s", record.recipe, record.build_key[:16], exc.message)
                continue
            inputs = InputsKey.from_statement(verified.statement, settings.build_arch)
            if inputs in logged_inputs:
                continue
            if verified.subjects() != record.outputs():
                raise StoreError(
                    E.STORE_CORRUPT,
                    f"record {record.build_key} ({record.recipe}): outputs differ from its signed provenance",
                    hint="the store was altered; investigate before publishing",
                )
            own.append(
                key=inputs,
                recipe=record.recipe,
                version=record.version,
                build_key=record.build_key,
                outputs=record.outputs(),
                envelope=envelope,
            )
            logged_builds.add(record.build_key)
            logged_inputs.add(inputs)
            added += 1
        if added or not (own.root / HEAD).exists():
            own.sign(key)
    log.info("attestation log: %d entries (%d new)", len(own.entries), added)
    return own


def publish(settings: Settings, destination: str) -> Log:
    """Sync the log, then copy it to ``destination``: the entries first, then the signed head that covers them, then
    the rebuild attestations of this organization's rechecks (``rebuilds.jsonl``, each line signed on its own)."""
    own = sync(settings)
    if not destination.startswith(("s3://", "http://", "https://")):
        Path(destination).mkdir(parents=True, exist_ok=True)
    remote.write(destination, ENTRIES, (own.root / ENTRIES).read_bytes() if (own.root / ENTRIES).exists() else b"")
    remote.write(destination, HEAD, (own.root / HEAD).read_bytes())
    remote.write(destination, rebuilds.REBUILDS, rebuilds.own_lines(settings))
    return own
