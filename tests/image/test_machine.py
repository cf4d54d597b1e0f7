"""``image boot --machine DIR``: a persistent machine made on first use and kept, the image never written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.cli.image_boot import prepare_machine
from farm.image import firmware
from tests.image.bootkeys import make_db_key, require_ovmf

pytestmark = pytest.mark.integration


def test_a_machine_keeps_its_disk_and_firmware_and_never_writes_the_image(tmp_path: Path) -> None:
    require_ovmf()
    image = tmp_path / "mangos_1.raw"
    with image.open("wb") as fh:  # data, a 64 MiB hole, data: like the image's free tail
        fh.write(b"GPT-and-partitions" * 1000)
        fh.seek(64 << 20)
        fh.write(b"tail")
    original = image.read_bytes()
    _, cert = make_db_key(tmp_path / "keys", "MANGOS machine test db")
    machine = tmp_path / "machine"

    disk, fw = prepare_machine(image, machine, (cert,))
    assert disk == machine / "disk.raw" and disk.read_bytes() == original
    assert disk.stat().st_blocks * 512 < 8 << 20  # a sparse copy: the hole costs nothing
    assert fw.secure_boot and fw.code == firmware.OVMF_CODE
    assert "MANGOS machine test db" in firmware.enrolled_certs(fw.vars)

    with disk.open("r+b") as fh:  # what a first boot writes (repart's partitions) ...
        fh.seek(32 << 20)
        fh.write(b"first boot wrote this")
    vars_mtime = os.stat(fw.vars).st_mtime_ns
    disk2, fw2 = prepare_machine(image, machine, (cert,))
    assert disk2 == disk and b"first boot wrote this" in disk2.read_bytes()  # ... is there on the next boot
    assert fw2.vars == fw.vars and os.stat(fw2.vars).st_mtime_ns == vars_mtime  # same enrolled variables
    assert image.read_bytes() == original
