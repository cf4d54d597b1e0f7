"""The updater's check that a release's UKI boots the root its signature partition names (issue #15): the UKI's
``roothash=`` token (a maximal run of ``[a-z0-9=]`` in the binary) must be exactly ``roothash=`` + the 64 hex digits
of the signature partition's ``rootHash``, or nothing is written. The script finds that token with ``grep -a -o``
(splitting the whole UKI into tokens with ``tr | sed`` took ~12 s of every update under TCG); these cases pin what the
token rule accepts and refuses. Same fake releases as ``test_updater`` (random payloads, a real GPT and FAT ESP).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.image import gpt, publish
from farm.image.sums import sha256sums, sign_detached
from farm.trust.release_keys import ReleaseKeys
from tests.image.test_updater import Out, copy_channel, digest, disk_of, labels, make_out, update
from tests.lib.release import release_keys
from tests.lib.tools import require

pytestmark = pytest.mark.integration

OTHER = "ab" * 32  # a well-formed root hash of some other root


def _with_uki_cmdline(out: Out, cmdline: str, keys: ReleaseKeys) -> None:
    """Replace ``out``'s UKI command line by ``cmdline`` and re-sign its SHA256SUMS."""
    uki = out.out / f"mangos_{out.version}.efi"
    data = uki.read_bytes()
    old = f" roothash={out.root_hash} ".encode()
    assert data.count(old) == 1
    uki.write_bytes(data.replace(old, cmdline.encode()))
    listed = sorted(p for p in out.out.iterdir() if p.name.startswith(f"mangos_{out.version}"))
    (out.out / "SHA256SUMS").write_text(sha256sums(listed))
    (out.out / "SHA256SUMS.p7s").write_bytes(sign_detached((out.out / "SHA256SUMS").read_bytes(), keys))


@pytest.mark.parametrize(
    ("case", "cmdline", "ok"),
    [
        ("exact", " roothash={h} ro ", True),
        ("first-exact-token-wins", " xroothash={o} roothash={h} roothash={o} ", True),
        ("another-root", " roothash={o} ro ", False),
        ("glued-prefix", " xroothash={h} ro ", False),
        ("glued-suffix", " roothash={h}0 ro ", False),
        ("uppercase-hex", " roothash={H} ro ", False),
        ("none", " root=/dev/mapper/root ro ", False),
    ],
)
def test_update_takes_the_ukis_exact_roothash_token(tmp_path: Path, case: str, cmdline: str, ok: bool) -> None:
    for tool in ("sfdisk", "openssl", "mkfs.vfat", "mcopy", "mdir", "mdel", "mren", "dd", "grep"):
        require(tool)
    keys = release_keys(tmp_path / "keys")
    v1, v2 = make_out(tmp_path, "1", keys), make_out(tmp_path, "2", keys)
    text = cmdline.format(h=v2.root_hash, o=OTHER, H=v2.root_hash.upper())
    _with_uki_cmdline(v2, text, keys)
    chan = tmp_path / "chan-src"
    for out in (v1, v2):
        publish.publish(out.out, str(chan), keys, tmp_path / "work")
    chan = copy_channel(chan, tmp_path / "chan")
    disk = disk_of(v1, tmp_path / "disk.raw")
    running, esp = digest(disk, 2, 3, 4), digest(disk, 1)
    done = update(disk, f"file://{chan}", v1, keys, tmp_path / "state")
    assert digest(disk, 2, 3, 4) == running  # the running slot, whatever happens
    if ok:
        assert done.returncode == 0, done.stderr
        assert labels(disk)[4:] == ["root-2", "verity-2", "verity-sig-2"]
        return
    assert done.returncode == 6, done.stderr
    shown = OTHER if case == "another-root" else "none"
    assert f"the UKI's roothash={shown} is not the root hash of mangos_2." in done.stderr, done.stderr
    assert labels(disk)[4:] == [gpt.EMPTY_LABEL] * 3  # nothing written
    assert digest(disk, 1) == esp  # no boot entry
