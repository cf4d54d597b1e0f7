"""``image publish``: a built image's release, added to a channel (:mod:`farm.image.channel`) in a directory or S3.

The payloads are read out of the image's GPT (root A's data, verity and signature partitions, up to their last
allocated block) and must equal the files ``image build`` listed in its signed SHA256SUMS, as must the .raw itself
(hashed while its block map is made) and the UKI: a release holds exactly what was built and signed.

Atomicity: the release directory is complete before channel.json names it. In a directory it is staged under a
temporary name and renamed into place (a rename onto an existing release fails); in S3 every object is written
with If-None-Match: * and channel.json with If-Match on the ETag it was read with, so two publishers cannot lose
each other's release, and republishing a version is refused (E-RELEASE-EXISTS).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography.hazmat.primitives import serialization

from farm.errors import E, FarmError, StoreError, TrustError
from farm.fsutil import atomic_write
from farm.image import bmap, channel, channelfiles, gpt
from farm.image.sums import sign_detached
from farm.trust.release_keys import ReleaseKeys, fingerprint, load_cert
from farm.trust.verify import file_sha256

if TYPE_CHECKING:
    from farm.store.s3 import S3Store

# image build's file names in out/ for each payload kind
BUILT = {channel.ROOT: ".root.erofs", channel.VERITY: ".root.verity", channel.VERITY_SIG: ".root.verity.sig"}
PARTITION = {
    channel.ROOT: gpt.ROOT_X86_64,
    channel.VERITY: gpt.ROOT_X86_64_VERITY,
    channel.VERITY_SIG: gpt.ROOT_X86_64_VERITY_SIG,
}
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class Staged:
    version: str
    dir: Path  # every file of the release, SHA256SUMS and its signature included
    release: channel.Release
    allocated: int
    image_size: int


def built_sums(out: Path, keys: ReleaseKeys) -> dict[str, str]:
    sums, sig = out / channelfiles.SUMS, out / "SHA256SUMS.p7s"
    if not sums.is_file() or not sig.is_file():
        raise FarmError(E.IMAGE_INPUT, f"no SHA256SUMS and SHA256SUMS.p7s in {out}", hint="run 'image build' first")
    if not channel.verifies(sums.read_bytes(), sig.read_bytes(), load_cert(keys.verity_cert)):
        raise TrustError(
            E.RELEASE_KEY,
            f"{sums} is not signed by the release key in {keys.dir}",
            hint="publish with the --release-keys the image was built with",
        )
    return channelfiles.parse_sums(sums.read_bytes())


def find_image(out: Path, digests: dict[str, str]) -> tuple[Path, str]:
    raws = sorted(n for n in digests if n.startswith("mangos_") and n.endswith(".raw"))
    if len(raws) != 1:
        raise FarmError(E.IMAGE_INPUT, f"{out}/SHA256SUMS lists {len(raws)} images", hint="publish one build's out/")
    return out / raws[0], channelfiles.check_version(raws[0][len("mangos_") : -len(".raw")])


def expect(path: Path, digest: str, what: str) -> None:
    got = file_sha256(path)
    if got != digest:
        raise FarmError(
            E.IMAGE_VERIFY,
            f"{what} is not what image build signed (sha256 {got}, SHA256SUMS says {digest})",
            file=path,
            hint="rebuild the image; never edit out/ by hand",
        )


def extract(raw: Path, version: str, dest: Path, sizes: dict[str, int]) -> tuple[list[bmap.Payload], gpt.TableEntry]:
    """Write root A's data, verity and signature partitions (their first ``sizes[kind]`` bytes: the size of the file
    image build put there) into ``dest``; returns them and the ESP's partition."""
    table = gpt.read_table(raw)
    payloads = []
    for kind, type_ in PARTITION.items():
        found = [e for e in table if e.type == type_ and e.name != gpt.EMPTY_LABEL]
        if len(found) != 1 or sizes[kind] > found[0].size:
            raise FarmError(E.IMAGE_VERIFY, f"{raw.name} has no single {kind} partition in use that fits", file=raw,
                            hint="publish an image made by image build")  # fmt: skip
        part = found[0]
        name = channel.file_name(version, kind)
        with raw.open("rb") as src, (dest / name).open("wb") as out:
            src.seek(part.start)
            left = sizes[kind]
            while left > 0 and (chunk := src.read(min(left, gpt.MIB))):
                out.write(chunk)
                left -= len(chunk)
        payloads.append(bmap.Payload(name, part.start, part.start + sizes[kind]))
    esp = [e for e in table if e.type == gpt.ESP]
    if len(esp) != 1:
        raise FarmError(E.IMAGE_VERIFY, f"{raw.name} has {len(esp)} ESPs", file=raw, hint="publish an image build")
    return payloads, esp[0]


def stage(out: Path, keys: ReleaseKeys, work: Path, next_key: Path | None = None) -> Staged:
    """The release of the image in ``out`` as files in a new directory under ``work``."""
    keys = keys.check()
    digests = built_sums(out, keys)
    raw, version = find_image(out, digests)
    dest = Path(tempfile.mkdtemp(prefix=f"release-{version}-", dir=work))
    built = {kind: f"mangos_{version}{suffix}" for kind, suffix in BUILT.items()}
    missing = [name for name in built.values() if name not in digests or not (out / name).is_file()]
    if missing:
        raise FarmError(E.IMAGE_INPUT, f"{out} lacks {', '.join(missing)}", hint="publish the out/ of image build")
    payloads, esp = extract(raw, version, dest, {k: (out / n).stat().st_size for k, n in built.items()})
    for kind, p in zip(PARTITION, payloads, strict=True):
        expect(dest / p.file, digests[built[kind]], f"the {kind} partition of {raw.name}")
    disk_name = channel.file_name(version, channel.DISK)
    block_map, raw_digest = bmap.build(raw, payloads, disk_name, dest / disk_name, [(esp.start, esp.start + esp.size)])
    if raw_digest != digests[raw.name]:
        raise FarmError(E.IMAGE_VERIFY, f"{raw.name} is not what image build signed", file=raw,
                        hint="rebuild the image; never edit out/ by hand")  # fmt: skip
    (dest / channel.file_name(version, channel.BMAP)).write_bytes(block_map.dumps())
    uki = out / channel.file_name(version, channel.UKI)
    expect(uki, digests[uki.name], "the UKI")
    shutil.copyfile(uki, dest / uki.name)
    next_fp = None
    if next_key is not None:
        cert = load_cert(next_key)
        next_fp = fingerprint(cert)
        (dest / channelfiles.NEXT_KEY).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    names = sorted(p.name for p in dest.iterdir())
    file_digests = {n: file_sha256(dest / n) for n in names}
    sums = channelfiles.format_sums(file_digests)
    (dest / channelfiles.SUMS).write_bytes(sums)
    (dest / channelfiles.SUMS_SIG).write_bytes(sign_detached(sums, keys))
    files = tuple(channel.FileEntry(n, d, (dest / n).stat().st_size) for n, d in file_digests.items())
    signer = fingerprint(load_cert(keys.verity_cert))
    release = channel.Release(version, files, signer, next_fp)
    return Staged(version, dest, release, block_map.allocated, block_map.size)


def check_signer(current: channel.Channel, release: channel.Release, url: str) -> None:
    """A release is signed by the channel's current key or the key its last release announced."""
    if not current.releases:
        return
    allowed = {current.certificate, current.releases[-1].next_key} - {None}
    if release.signer not in allowed:
        raise TrustError(
            E.RELEASE_KEY,
            f"{url} is signed by key {current.certificate[:16]}..., not by this release key ({release.signer[:16]}...)",
            hint="publish with the channel's release keys; to change keys, announce the new one first "
            "(image publish --next-key NEW/verity.crt, signed by the current key)",
        )


def publish_dir(staged: Staged, dest: Path) -> channel.Channel:
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / ".channel.lock").open("a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one publisher at a time updates channel.json
        index = dest / channelfiles.CHANNEL
        current = channel.Channel.loads(index.read_bytes() if index.exists() else None)
        check_signer(current, staged.release, str(dest))
        current.add(staged.release, str(dest))
        final = dest / staged.version
        if final.exists():
            raise FarmError(
                E.RELEASE_EXISTS,
                f"{final} exists but channel.json does not list it (an interrupted publish)",
                hint=f"remove {final} and publish again",
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{staged.version}.", dir=dest))
        try:
            for p in sorted(staged.dir.iterdir()):
                shutil.copyfile(p, tmp / p.name)
                os.chmod(tmp / p.name, 0o444)
            os.chmod(tmp, 0o755)  # noqa: S103 - a channel is public: served to every machine
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        atomic_write(index, current.dumps())
    return current


class _ReleaseObjects:
    """An S3 store seen by :func:`farm.store.s3_multipart.put_stream`: the 'blob' of a digest is the release file
    with that digest, so large files get the store's checked, conditional multipart upload."""

    def __init__(self, store: S3Store, keys: dict[str, str]) -> None:
        self._store = store
        self._keys = keys

    def blob_key(self, digest: str) -> str:
        return self._keys[digest]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def publish_s3(staged: Staged, url: str) -> channel.Channel:
    from farm.store.s3 import S3Store
    from farm.store.s3_errors import conditional_write, is_missing
    from farm.store.s3_multipart import Bucket, put_stream

    store = S3Store(url)
    index = f"{store.prefix}{channelfiles.CHANNEL}"
    with store._errors():
        store.ready()
        current, etag = _read_channel(store, index, is_missing)
        check_signer(current, staged.release, url)
        channel.Channel(list(current.releases)).add(staged.release, url)
        release_prefix = f"{store.prefix}{staged.version}/"
        if store.call(store.client.list_objects_v2, Bucket=store.bucket, Prefix=release_prefix).get("KeyCount", 0):
            raise FarmError(
                E.RELEASE_EXISTS,
                f"{url}/{staged.version}/ exists but channel.json does not list it",
                hint=f"remove {url}/{staged.version}/ (an interrupted publish) and publish again",
            )
        known = {f.name: f.sha256 for f in staged.release.files}
        for path in sorted(staged.dir.iterdir()):
            digest = known.get(path.name) or file_sha256(path)
            objects = cast(Bucket, _ReleaseObjects(store, {digest: release_prefix + path.name}))
            with path.open("rb") as fh:
                put_stream(objects, fh, path.name, digest)
        for _ in range(CONFLICT_RETRIES):
            current.add(staged.release, url)
            if conditional_write(partial(_put_channel, store, index, current.dumps(), etag)):
                return current
            current, etag = _read_channel(store, index, is_missing)  # another publisher came first: on top of it
        raise StoreError(E.STORE_UNREACHABLE, f"{url}: channel.json kept changing", hint="publish again")


def _put_channel(store: S3Store, key: str, body: bytes, etag: str | None) -> object:
    """PutObject of channel.json, only over the version read (If-Match), or only if there is none yet."""
    if etag is None:
        return store.call(store.client.put_object, Bucket=store.bucket, Key=key, Body=body,
                          ContentType="application/json", IfNoneMatch="*")  # fmt: skip
    return store.call(store.client.put_object, Bucket=store.bucket, Key=key, Body=body,
                      ContentType="application/json", IfMatch=etag)  # fmt: skip


def _read_channel(store: S3Store, key: str, is_missing: Any) -> tuple[channel.Channel, str | None]:
    from botocore.exceptions import ClientError

    try:
        resp = store.call(store.client.get_object, Bucket=store.bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return channel.Channel(), None
        raise
    with resp["Body"] as body:
        return channel.Channel.loads(body.read()), resp["ETag"]


@dataclass(frozen=True)
class Published:
    url: str
    staged: Staged
    channel: channel.Channel

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.url,
            "version": self.staged.version,
            "files": self.staged.release.to_json()["files"],
            "signer": self.staged.release.signer,
            "next_key": self.staged.release.next_key,
            "image_size": self.staged.image_size,
            "allocated": self.staged.allocated,
            "releases": self.channel.versions(),
        }


def publish(out: Path, dest: str, keys: ReleaseKeys, work: Path, next_key: Path | None = None) -> Published:
    work.mkdir(parents=True, exist_ok=True)
    staged = stage(out, keys, work, next_key)
    try:
        if dest.lower().startswith("s3:"):
            return Published(dest, staged, publish_s3(staged, dest))
        return Published(dest, staged, publish_dir(staged, Path(dest)))
    finally:
        shutil.rmtree(staged.dir, ignore_errors=True)
