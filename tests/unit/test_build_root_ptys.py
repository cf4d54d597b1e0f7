"""The Debian build root's /dev has ptys of its own: a private devpts instance and /dev/ptmx pointing into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.build import debian

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("userxattr", [False, True])  # a root worker, and a rootless one (in its user namespace)
def test_the_build_root_mounts_a_private_devpts_and_its_ptmx(userxattr: bool) -> None:
    script = debian.outer_script(
        lower=Path("/l"), layer=Path("/w"), src=Path("/s"), repo=Path("/r"), out=Path("/o"), inner="true",
        userxattr=userxattr,
    )  # fmt: skip
    lines = script.splitlines()
    devpts = "mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts /w/merged/dev/pts"
    assert devpts in lines and "ln -s pts/ptmx /w/merged/dev/ptmx" in lines
    # after /dev (a tmpfs) and its pts directory exist, before the chroot
    assert lines.index("mount -t tmpfs -o mode=755 tmpfs /w/merged/dev") < lines.index(devpts)
    assert lines.index("mkdir -p /w/merged/dev/shm /w/merged/dev/pts") < lines.index(devpts)
    assert lines.index(devpts) < next(i for i, line in enumerate(lines) if line.startswith("exec chroot"))
