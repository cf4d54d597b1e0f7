"""The MANGOS image end to end through the CLI: from the farm's verified hello .deb and pinned archive packages to
a signed disk image that standard tools accept (systemd-dissect, veritysetup, openssl cms, sbverify), that
``image verify`` checks from its bytes, that ``trace`` follows back to a source commit, and that a second build
reproduces byte for byte."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.image_fixtures import BuiltImage, build_image

pytestmark = pytest.mark.e2e


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_standard_tools_accept_the_image(built_image: BuiltImage, tmp_path: Path) -> None:
    img = built_image
    require("systemd-dissect")
    require("sbverify")
    require("openssl")
    dissect = _run(["systemd-dissect", "--json=short", str(img.raw)])
    assert dissect.returncode == 0, dissect.stderr
    info = json.loads(dissect.stdout)
    mounts = {m["designator"]: m for m in info["mounts"]}
    assert {"root", "root-verity", "root-verity-sig", "esp"} <= set(mounts), info
    assert mounts["root"]["verity"] == "signed" and mounts["root"]["fstype"] == "erofs"
    assert info["useBootableUefi"] is True

    ok = _run(["veritysetup", "verify", str(img.root), str(img.verity), img.root_hash])
    assert ok.returncode == 0, ok.stderr

    doc = json.loads(img.signature.read_bytes().rstrip(b"\0"))
    assert doc["rootHash"] == img.root_hash and len(img.signature.read_bytes()) == 4096
    (tmp_path / "sig.der").write_bytes(base64.b64decode(doc["signature"]))
    (tmp_path / "roothash").write_text(img.root_hash)
    cms = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
           "-content", str(tmp_path / "roothash"), "-CAfile", str(img.verity_cert), "-purpose", "any",
           "-out", "/dev/null"]  # fmt: skip
    checked = _run(cms)
    assert checked.returncode == 0, checked.stderr

    sb = _run(["sbverify", "--cert", str(img.db_cert), str(img.uki)])
    assert sb.returncode == 0, sb.stdout + sb.stderr
    assert _run(["sbverify", "--cert", str(img.verity_cert), str(img.uki)]).returncode != 0  # not the db key

    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=img.out, capture_output=True, text=True, check=False)
    assert sums.returncode == 0 and f"{img.raw.name}: OK" in sums.stdout, sums.stdout + sums.stderr
    sums_sig = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(img.out / "SHA256SUMS.p7s"),
                "-content", str(img.out / "SHA256SUMS"), "-CAfile", str(img.verity_cert), "-purpose", "any",
                "-out", "/dev/null"]  # fmt: skip
    assert _run(sums_sig).returncode == 0


def test_image_verify_checks_the_bytes_and_refuses_tampering(built_image: BuiltImage, tmp_path: Path) -> None:
    img = built_image
    good = img.farm.json("image", "verify", str(img.raw), "--cert", str(img.verity_cert), "--db-cert", str(img.db_cert))
    assert good["ok"] is True and good["root_hash"] == img.root_hash
    names = {c["name"] for c in good["checks"] if c["ok"]}
    assert {"verity-tree", "signature", "partition-uuids", "uki-cmdline", "uki-secure-boot"} <= names
    text = img.farm.run("image", "verify", str(img.raw), "--cert", str(img.verity_cert))
    assert "verified" in text.stdout

    # one flipped byte in the root partition: the recomputed tree no longer matches the signed root hash
    table = json.loads(_run(["sfdisk", "--json", str(img.raw)]).stdout)["partitiontable"]
    root = next(p for p in table["partitions"] if p["name"].startswith("root-"))
    bad = tmp_path / "tampered.raw"
    shutil.copyfile(img.raw, bad)
    with bad.open("r+b") as fh:
        fh.seek(root["start"] * 512 + 3 * 4096 + 17)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    proc = img.farm.run("image", "verify", str(bad), "--cert", str(img.verity_cert), "--json", check=False)
    assert proc.returncode == 1
    checks = {c["name"]: c["ok"] for c in json.loads(proc.stdout)["checks"]}
    assert checks["verity-tree"] is False and checks["signature"] is True

    # another organisation's certificate does not verify the signature
    img.farm.run("keys", "generate", "--release", str(tmp_path / "other"))
    proc = img.farm.run("image", "verify", str(img.raw), "--cert", str(tmp_path / "other/verity.crt"), check=False)
    assert proc.returncode == 1 and "FAIL signature" in proc.stdout


def test_trace_reaches_the_source_commit(built_image: BuiltImage) -> None:
    img = built_image
    hello = img.farm.json("trace", str(img.raw), "/usr/bin/hello", "--cert", str(img.verity_cert))
    assert hello["image_signature"] == "verified" and hello["image_root_hash"] == img.root_hash
    assert hello["package"] == "hello" and hello["origin"] == "farm"
    assert hello["commit"] == img.commits["hello"] and hello["signature"] == "verified"
    assert hello["file_matches_package"] is True
    # a file of an archive package says so (the merged-/usr name is found too); a file no package owns is an error
    sh = img.farm.run("trace", str(img.raw), "/bin/sh").stdout
    assert "package  dash" in sh and "pinned from the Debian archive" in sh
    missing = img.farm.run("trace", str(img.raw), "/usr/bin/no-such-tool", check=False)
    assert missing.returncode == 2 and "E-IMAGE-TRACE" in missing.stderr

    # the SBOM names every package with its origin and digest
    sbom = json.loads(next(img.out.glob("*.spdx.json")).read_text())
    by_name = {p["name"]: p for p in sbom["packages"]}
    assert img.commits["hello"] in by_name["hello"]["sourceInfo"]
    assert by_name["systemd"]["comment"] == "origin: archive"
    assert all(len(p["checksums"][0]["checksumValue"]) == 64 for p in sbom["packages"])


def test_inputs_are_checked_and_a_tampered_deb_stops_the_build(built_image: BuiltImage, tmp_path: Path) -> None:
    img = built_image
    listed = img.farm.json("image", "build", "--check-inputs")
    origins = {p["name"]: p["origin"] for p in listed["packages"]}
    assert origins["hello"] == "farm" and origins["libc6"] == "archive"
    assert next(p for p in listed["packages"] if p["name"] == "hello")["commit"] == img.commits["hello"]

    # K-of-N admission: this organization's own attestation is one vote; two cannot be met without peers
    peers = tmp_path / "peers.toml"
    peers.write_text("")
    admitted = img.farm.run("image", "build", "--check-inputs", "--require-agreement", "1", "--trust", str(peers))
    assert "hello" in admitted.stdout
    refused = img.farm.run(
        "image", "build", "--check-inputs", "--require-agreement", "2", "--trust", str(peers), check=False
    )
    assert refused.returncode == 2 and "E-ADMISSION-REFUSED" in refused.stderr, refused.stderr

    fetched = tmp_path / "debs"
    img.farm.run("fetch", "--commit", img.commits["hello"], "-o", str(fetched))
    deb = fetched / "hello_2.10-3_amd64.deb"
    data = bytearray(deb.read_bytes())
    data[len(data) // 2] ^= 1
    deb.write_bytes(bytes(data))
    (tmp_path / "none").mkdir()
    proc = img.farm.run(
        "image", "build", "--check-inputs", "--recipes", str(tmp_path / "none"), "--deb", str(deb), check=False
    )
    assert proc.returncode == 2 and "E-VERIFY-DIGEST" in proc.stderr, proc.stderr


def test_the_image_holds_no_package_older_than_the_archive(built_image: BuiltImage) -> None:
    """Security updates flow in, never out: over the build's own lock, every package (farm-built or pinned) is at
    least the archive's candidate version, compared as code (a binNMU of the same source is not newer)."""
    from farm.archive.versions import ArchiveVersions, is_older_code
    from farm.image import lock

    made = lock.load(built_image.out / lock.DEFAULT_NAME)
    packages = [*made.packages, *made.profile_packages]
    assert len(packages) > 100 and any(p.origin == lock.FARM for p in packages)
    archive = ArchiveVersions.load({p.name for p in packages})
    older = []
    for p in packages:
        candidate = archive.candidate(p.name, p.arch)
        if candidate is not None and is_older_code(p.version, candidate.version):
            older.append(f"{p.name} {p.version} ({p.origin}) < {candidate.version} ({candidate.archive})")
    assert not older, older
    farm = [p for p in packages if p.origin == lock.FARM]
    assert all(archive.candidate(p.name, p.arch) for p in farm), farm  # the comparison had something to compare


def test_a_second_build_is_byte_identical(built_image: BuiltImage, tmp_path: Path) -> None:
    img = built_image
    again = build_image(img.farm, tmp_path / "again")
    raw = Path(str(again["raw"]))
    assert raw.name == img.raw.name
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(img.raw.read_bytes()).hexdigest()
    assert (tmp_path / "again" / "SHA256SUMS").read_bytes() == (img.out / "SHA256SUMS").read_bytes()


def test_image_sysext_cli_makes_a_signed_extension(built_image: BuiltImage, tmp_path: Path) -> None:
    img = built_image
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    made = img.farm.json("image", "sysext", "tools", str(tree), "-o", str(tmp_path / "out"))
    info = json.loads(_run(["systemd-dissect", "--json=short", made["raw"]]).stdout)
    assert info["useSystemExtension"] is True and "ID=_any" in info["extensionRelease"]
    assert {m["designator"]: m["verity"] for m in info["mounts"]}["root"] == "signed"
    bad = img.farm.run("image", "sysext", "tools", str(tmp_path / "missing"), "-o", str(tmp_path / "o2"), check=False)
    assert bad.returncode == 2 and "E-IMAGE-INPUT" in bad.stderr
