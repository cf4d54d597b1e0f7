"""``image publish`` and the channel: payloads from the GPT, signed SHA256SUMS, refusal to republish, S3, and the
verifier's key rotation (generated keys, a small image with the built image's layout: tests/lib/release.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from farm.cli.main import main
from farm.errors import E, FarmError
from farm.image import bmap, channel, channelfiles, publish
from farm.image.sums import sign_detached
from farm.trust.release_keys import ReleaseKeys, fingerprint, load_cert
from tests.lib.moto import MotoServer, s3_env
from tests.lib.release import Built, build_out, release_keys
from tests.lib.tools import require

V1, V2 = "1.0", "2.0"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[ReleaseKeys]:
    """Three release key sets: the current key and two others."""
    base = tmp_path_factory.mktemp("keys")
    return [release_keys(base / f"k{i}") for i in range(3)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: list[ReleaseKeys]) -> Built:
    require("sfdisk")
    return build_out(tmp_path_factory.mktemp("build") / "out", V1, keys[0])


def read_dir(base: Path) -> channel.Fetch:
    return lambda rel: (base / rel).read_bytes()


def cert(k: ReleaseKeys) -> x509.Certificate:
    return load_cert(k.verity_cert)


@pytest.mark.integration
def test_publish_writes_signed_payloads_from_the_gpt(built: Built, keys: list[ReleaseKeys], tmp_path: Path) -> None:
    require("openssl")
    dest = tmp_path / "chan"
    done = publish.publish(built.out, str(dest), keys[0], tmp_path / "work")
    rel = dest / V1
    names = {p.name for p in rel.iterdir()}
    assert names == {channel.file_name(V1, k) for k in ("root", "verity", "verity-sig", "efi", "disk", "bmap")} | {
        channelfiles.SUMS,
        channelfiles.SUMS_SIG,
    }
    # the payloads read out of the GPT are exactly the files image build made
    for kind, suffix in publish.BUILT.items():
        assert (rel / channel.file_name(V1, kind)).read_bytes() == built.built(suffix).read_bytes(), kind
    sums = channelfiles.parse_sums((rel / channelfiles.SUMS).read_bytes())
    assert set(sums) == names - {channelfiles.SUMS, channelfiles.SUMS_SIG}
    assert all(hashlib.sha256((rel / n).read_bytes()).hexdigest() == d for n, d in sums.items())
    subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(rel / channelfiles.SUMS_SIG),
         "-content", str(rel / channelfiles.SUMS), "-CAfile", str(keys[0].verity_cert), "-out", "/dev/null"],
        check=True, capture_output=True,
    )  # fmt: skip
    index = json.loads((dest / channelfiles.CHANNEL).read_text())
    assert index["format"] == channel.FORMAT and [r["version"] for r in index["releases"]] == [V1]
    assert index["certificate_fingerprint"] == fingerprint(cert(keys[0])) == done.staged.release.signer
    assert done.staged.allocated < done.staged.image_size / 2  # holes are neither stored nor sent
    assert channel.verify_release(read_dir(dest), [cert(keys[0])]).version == V1

    with pytest.raises(FarmError) as again:  # republishing is refused, the channel is untouched
        publish.publish(built.out, str(dest), keys[0], tmp_path / "work")
    assert again.value.code == E.RELEASE_EXISTS and again.value.hint
    assert json.loads((dest / channelfiles.CHANNEL).read_text()) == index


@pytest.mark.integration
def test_publish_refuses_an_image_that_is_not_the_signed_build(
    built: Built, keys: list[ReleaseKeys], tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built.out, out)
    raw = out / built.raw.name
    with raw.open("wb") as fh, built.raw.open("rb") as src:  # a copy without holes (a download, cp --sparse=never)
        shutil.copyfileobj(src, fh)
    assert sum(e - s for s, e in bmap.data_extents(raw)) > built.raw.stat().st_size * 0.9
    sparse = publish.publish(built.out, str(tmp_path / "c1"), keys[0], tmp_path / "work")
    dense = publish.publish(out, str(tmp_path / "c2"), keys[0], tmp_path / "work")
    assert dense.staged.release == sparse.staged.release  # the same block map, payloads and disk.raw
    with raw.open("r+b") as fh:  # one byte of the ESP changes: no payload covers it, the .raw's digest does
        fh.seek(gpt_esp_start(raw) + 100)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(FarmError) as err:
        publish.publish(out, str(tmp_path / "chan"), keys[0], tmp_path / "work")
    assert err.value.code == E.IMAGE_VERIFY
    with pytest.raises(FarmError) as wrong_key:
        publish.publish(built.out, str(tmp_path / "chan"), keys[1], tmp_path / "work")
    assert wrong_key.value.code == E.RELEASE_KEY
    assert not (tmp_path / "chan" / channelfiles.CHANNEL).exists()


def gpt_esp_start(raw: Path) -> int:
    from farm.image import gpt

    return next(e.start for e in gpt.read_table(raw) if e.type == gpt.ESP)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer.start(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_publish_to_s3_is_conditional_and_refuses_a_republish(
    built: Built, keys: list[ReleaseKeys], tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_env(moto.url).items():
        monkeypatch.setenv(k, v)
    moto.client.create_bucket(Bucket="releases")
    url = "s3://releases/mangos/stable"
    publish.publish(built.out, url, keys[0], tmp_path / "work")
    v2 = build_out(tmp_path / "out2", V2, keys[0])
    publish.publish(v2.out, url, keys[0], tmp_path / "work", next_key=keys[1].verity_cert)

    def fetch(rel: str) -> bytes:
        return moto.client.get_object(Bucket="releases", Key=f"mangos/stable/{rel}")["Body"].read()

    got = channel.verify_release(fetch, [cert(keys[0])])
    assert got.version == V2 and fingerprint(cert(keys[1])) in {fingerprint(c) for c in got.trusted}
    before = fetch(channelfiles.CHANNEL)
    with pytest.raises(FarmError) as again:
        publish.publish(v2.out, url, keys[0], tmp_path / "work")
    assert again.value.code == E.RELEASE_EXISTS
    assert fetch(channelfiles.CHANNEL) == before
    assert fetch(f"{V1}/{channel.file_name(V1, 'root')}") == built.built(".root.erofs").read_bytes()


# -- key rotation: channels written by hand, one small file per release ----------------------------------------------
def add_release(dest: Path, version: str, signer: ReleaseKeys, next_key: ReleaseKeys | None = None) -> None:
    rel = dest / version
    rel.mkdir(parents=True)
    (rel / channel.file_name(version, "efi")).write_bytes(f"uki {version}".encode())
    if next_key is not None:
        (rel / channelfiles.NEXT_KEY).write_bytes(cert(next_key).public_bytes(serialization.Encoding.PEM))
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in rel.iterdir()}
    sums = channelfiles.format_sums(digests)
    (rel / channelfiles.SUMS).write_bytes(sums)
    (rel / channelfiles.SUMS_SIG).write_bytes(sign_detached(sums, signer))
    index = dest / channelfiles.CHANNEL
    current = channel.Channel.loads(index.read_bytes() if index.exists() else None)
    files = tuple(channel.FileEntry(n, d, 1) for n, d in digests.items())
    nxt = fingerprint(cert(next_key)) if next_key else None
    current.add(channel.Release(version, files, fingerprint(cert(signer)), nxt), str(dest))
    index.write_bytes(current.dumps())


@pytest.mark.unit
def test_rotation_follows_announcements_and_retires_the_old_key(keys: list[ReleaseKeys], tmp_path: Path) -> None:
    k0, k1, _ = keys
    add_release(tmp_path, "1", k0)
    add_release(tmp_path, "2", k0, next_key=k1)  # k0 announces k1
    add_release(tmp_path, "3", k1)
    fetch = read_dir(tmp_path)
    got = channel.verify_release(fetch, [cert(k0)])
    assert got.version == "3" and got.signer == fingerprint(cert(k1))
    assert [fingerprint(c) for c in got.trusted] == [fingerprint(cert(k1))]  # k0 retired once k1 signed
    assert channel.verify_release(fetch, [cert(k0)], "2").signer == fingerprint(cert(k0))
    assert channel.verify_release(fetch, [cert(k1)]).version == "3"  # a machine that already learned k1

    add_release(tmp_path, "4", k0)  # the retired key signs again
    with pytest.raises(FarmError) as retired:
        channel.verify_release(fetch, [cert(k0)])
    assert retired.value.code == E.CHANNEL_UNTRUSTED and retired.value.hint


@pytest.mark.unit
def test_a_key_never_announced_is_refused(keys: list[ReleaseKeys], tmp_path: Path) -> None:
    k0, _, k2 = keys
    add_release(tmp_path, "1", k0)
    add_release(tmp_path, "2", k2)  # no release announced k2
    with pytest.raises(FarmError) as err:
        channel.verify_release(read_dir(tmp_path), [cert(k0)])
    assert err.value.code == E.CHANNEL_UNTRUSTED
    assert channel.verify_release(read_dir(tmp_path), [cert(k0)], "1").version == "1"


@pytest.mark.unit
def test_an_announcement_by_an_untrusted_key_teaches_nothing(keys: list[ReleaseKeys], tmp_path: Path) -> None:
    k0, k1, k2 = keys
    add_release(tmp_path, "1", k2, next_key=k1)  # k2 is not trusted: its announcement of k1 is ignored
    add_release(tmp_path, "2", k1)
    with pytest.raises(FarmError) as err:
        channel.verify_release(read_dir(tmp_path), [cert(k0)])
    assert err.value.code == E.CHANNEL_UNTRUSTED


@pytest.mark.unit
def test_tampered_or_replayed_sums_are_refused(keys: list[ReleaseKeys], tmp_path: Path) -> None:
    k0 = keys[0]
    add_release(tmp_path, "1", k0)
    add_release(tmp_path, "2", k0)
    sums = tmp_path / "2" / channelfiles.SUMS
    good = sums.read_bytes()
    sums.write_bytes(good.replace(b"mangos_2.efi", b"mangos_2.efX"))
    with pytest.raises(FarmError) as tampered:
        channel.verify_release(read_dir(tmp_path), [cert(k0)])
    assert tampered.value.code == E.CHANNEL_UNTRUSTED
    for name in (channelfiles.SUMS, channelfiles.SUMS_SIG):  # release 1's genuine, signed sums served as release 2's
        (tmp_path / "2" / name).write_bytes((tmp_path / "1" / name).read_bytes())
    with pytest.raises(FarmError) as replayed:
        channel.verify_release(read_dir(tmp_path), [cert(k0)])
    assert replayed.value.code == E.CHANNEL_INVALID


@pytest.mark.integration
def test_publish_rotates_keys_only_through_an_announcement(
    built: Built, keys: list[ReleaseKeys], tmp_path: Path
) -> None:
    k0, k1, _ = keys
    dest = tmp_path / "chan"
    publish.publish(built.out, str(dest), k0, tmp_path / "work", next_key=k1.verity_cert)
    v2 = build_out(tmp_path / "out2", V2, k1)
    publish.publish(v2.out, str(dest), k1, tmp_path / "work")  # signed by the announced key
    v3 = build_out(tmp_path / "out3", "3.0", k0)
    with pytest.raises(FarmError) as err:  # the old key no longer signs for this channel
        publish.publish(v3.out, str(dest), k0, tmp_path / "work")
    assert err.value.code == E.RELEASE_KEY
    got = channel.verify_release(read_dir(dest), [cert(k0)])
    assert got.version == V2 and json.loads((dest / channelfiles.CHANNEL).read_text())["certificate_fingerprint"] == (
        fingerprint(cert(k1))
    )


@pytest.mark.integration
def test_cli_publish(built: Built, keys: list[ReleaseKeys], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "chan"
    argv = ["--home", str(tmp_path / "home"), "image", "publish", str(built.out), "-o", str(dest)]
    assert main([*argv, "--release-keys", str(keys[0].dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == V1 and doc["releases"] == [V1] and doc["allocated"] < doc["image_size"]
    assert main([*argv, "--release-keys", str(keys[0].dir)]) == 2
    assert "E-RELEASE-EXISTS" in capsys.readouterr().err


@pytest.mark.integration
def test_a_version_listed_in_channel_json_is_never_republished(
    built: Built, keys: list[ReleaseKeys], tmp_path: Path
) -> None:
    import shutil

    dest = tmp_path / "chan"
    publish.publish(built.out, str(dest), keys[0], tmp_path / "work")
    shutil.rmtree(dest / V1)  # even with its directory gone, the index keeps the version taken
    with pytest.raises(FarmError) as err:
        publish.publish(built.out, str(dest), keys[0], tmp_path / "work")
    assert err.value.code == E.RELEASE_EXISTS and not (dest / V1).exists()


@pytest.mark.integration
def test_s3_publishers_racing_for_channel_json_both_land(
    built: Built, keys: list[ReleaseKeys], tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_env(moto.url).items():
        monkeypatch.setenv(k, v)
    moto.client.create_bucket(Bucket="race")
    first = channel.Channel()
    first.add(channel.Release("0.8", (), fingerprint(cert(keys[0]))), "earlier")
    moto.client.put_object(Bucket="race", Key="chan/channel.json", Body=first.dumps())  # so ours is If-Match
    other = channel.Channel.loads(first.dumps())
    other.add(channel.Release("0.9", (), fingerprint(cert(keys[0]))), "other publisher")
    real = publish._put_channel
    raced: list[bool] = []

    def put_after_another_publisher(store: object, key: str, body: bytes, etag: str | None) -> object:
        if not raced:  # between our read and our write, another publisher's channel.json lands
            raced.append(True)
            moto.client.put_object(Bucket="race", Key=key, Body=other.dumps())
        return real(store, key, body, etag)  # type: ignore[arg-type]

    monkeypatch.setattr(publish, "_put_channel", put_after_another_publisher)
    publish.publish(built.out, "s3://race/chan", keys[0], tmp_path / "work")
    index = channel.Channel.loads(moto.client.get_object(Bucket="race", Key="chan/channel.json")["Body"].read())
    assert raced and index.versions() == ["0.8", "0.9", V1]
