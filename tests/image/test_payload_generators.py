"""The systemd generators the image masks (:data:`farm.image.payload.MASKED_GENERATORS`): each is a /dev/null link in
/etc/systemd/system-generators, as ``systemctl mask`` does for units, and none of the generators the boot needs is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.image import payload

SDE = 1_700_000_000
MID = "0123456789abcdef0123456789abcdef"
# What the boot needs: the root (veritysetup), swap, /var and /var/tmp with their unlocking (gpt-auto), /etc/fstab,
# and the serial console's getty.
NEEDED = (
    "systemd-veritysetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-fstab-generator",
    "systemd-getty-generator",
)

pytestmark = pytest.mark.unit


def test_customize_masks_the_generators_the_image_has_no_input_for(tmp_path: Path) -> None:
    root = tmp_path / "root"
    generators = root / "usr/lib/systemd/system-generators"
    generators.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/machine-id").write_text("")
    for name in (*payload.MASKED_GENERATORS, *NEEDED):
        (generators / name).write_text("#!/bin/sh\n")
    masks = root / "etc/systemd/system-generators"
    masks.mkdir(parents=True)
    (masks / "systemd-sysv-generator").write_text("left by a package\n")  # replaced, not written through
    payload.customize(root, machine_id=MID, sde=SDE)
    assert sorted(p.name for p in masks.iterdir()) == sorted(payload.MASKED_GENERATORS)
    for name in payload.MASKED_GENERATORS:
        assert os.readlink(masks / name) == "/dev/null"
        assert os.lstat(masks / name).st_mtime == SDE
    assert not set(NEEDED) & set(payload.MASKED_GENERATORS)
    assert (generators / "systemd-sysv-generator").read_text() == "#!/bin/sh\n"
