"""The worker's minimum privileges, measured on this host rather than asserted.

compose.yaml and deploy/kubernetes/worker.yaml run workers as an unprivileged user with every capability dropped
and no_new_privs, and make exactly three exceptions to the container defaults. Each test here reproduces one
container condition around the farm's real bubblewrap command line (farm.build.sandbox.bwrap_argv):

- no capabilities at all (uid 65534, empty bounding set, no_new_privs) and the worker's seccomp profile
  (deploy/seccomp/worker.json): a build step compiles and runs a C program -> SYS_ADMIN is not needed;
- a seccomp filter that, like Docker's and containerd's default profile for a container without SYS_ADMIN,
  refuses namespace creation: bwrap cannot start -> the seccomp exception is needed;
- /proc with masked and read-only paths, as runtimes set it up unless told `systempaths=unconfined` /
  `procMount: Unmasked`: bwrap cannot mount the build's /proc -> that exception is needed;
- the worker profile still refuses keyctl, bpf, perf_event_open, io_uring and setns.

(AppArmor, the third exception, cannot be measured here: this kernel has no AppArmor.) Needs root, to become the
unprivileged user and to build the masked /proc in a private mount namespace; CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.build.sandbox import SandboxSpec, base_env, bwrap_argv, step_command
from tests.conftest import IN_CI, require
from tests.deploy.common import SECCOMP_PROFILE

pytestmark = pytest.mark.integration

NOBODY = 65534
HELPER = Path(__file__).with_name("seccomp_exec.py")
# What Docker's and containerd's default seccomp profiles do for a container without CAP_SYS_ADMIN, reduced to
# the rules that matter to bwrap: namespace creation and mounting refused.
NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)  # CLONE_NEW*
DEFAULT_LIKE_PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        {"names": ["unshare", "mount", "umount2", "pivot_root", "setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        *(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
            for flag in NS_FLAGS
        ),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # ENOSYS: glibc falls back to clone
    ],
}
STEP = (
    'printf \'int main(void){return 0;}\\n\' > t.c && cc -o "$OUT/t" t.c && "$OUT/t"'
    ' && id -u > "$OUT/uid" && grep \'^CapEff\' /proc/self/status > "$OUT/caps"'
)
PROBE = r"""
import ctypes, ctypes.util, errno, json
seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp"))
seccomp.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
libc = ctypes.CDLL(None, use_errno=True)
calls = {"keyctl": (0, -3, 0), "add_key": (0, 0, 0, 0, 0), "bpf": (0, 0, 0), "perf_event_open": (0, 0, -1, -1, 0),
         "io_uring_setup": (0, 0), "setns": (-1, 0)}
result = {}
for name, args in calls.items():
    ctypes.set_errno(0)
    rc = libc.syscall(seccomp.seccomp_syscall_resolve_name(name.encode()), *[ctypes.c_long(a) for a in args])
    result[name] = "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
print(json.dumps(result))
"""


@dataclass
class Host:
    root: Path  # world-readable scratch directory
    python: str  # a python the unprivileged user can run (the helper needs only the standard library)

    def unprivileged(self, *argv: str, profile: Mapping[str, Any] | None = None) -> list[str]:
        """argv as uid 65534 with no capabilities and no_new_privs, under ``profile`` if given."""
        drop = [
            require("setpriv"),
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]
        if profile is None:
            return [*drop, *argv]
        path = self.root / f"profile-{len(list(self.root.glob('profile-*')))}.json"
        path.write_text(json.dumps(profile))
        path.chmod(0o644)
        return [*drop, self.python, str(self.root / HELPER.name), str(path), "--", *argv]

    def sandbox(self, name: str) -> tuple[list[str], Path]:
        """The farm's bwrap command line for one build step, in fresh directories owned by uid 65534."""
        dirs = {}
        for part in ("src", "out", "home"):
            d = self.root / name / part
            d.mkdir(parents=True)
            os.chown(d, NOBODY, NOBODY)
            dirs[part] = d
        os.chmod(self.root / name, 0o755)
        spec = SandboxSpec(src=dirs["src"], out=dirs["out"], home=dirs["home"], env=base_env(0))
        return bwrap_argv(spec, step_command(STEP)), dirs["out"]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the privilege measurements need root (CI runs as root)")
        pytest.skip("needs root to switch to an unprivileged user and to mask /proc")
    for tool in ("bwrap", "setpriv", "unshare", "mount", "cc"):
        require(tool)
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else require("python3")
    root = Path(tempfile.mkdtemp(prefix="mangos-privileges-"))
    root.chmod(0o755)
    shutil.copy(HELPER, root / HELPER.name)
    (root / HELPER.name).chmod(0o644)
    try:
        yield Host(root, python)
    finally:
        shutil.rmtree(root)


def test_sandbox_runs_with_no_capability_under_the_worker_profile(host: Host) -> None:
    argv, out = host.sandbox("worker-profile")
    result = run(host.unprivileged(*argv, profile=json.loads(SECCOMP_PROFILE.read_text())))
    assert result.returncode == 0, result.stderr
    assert (out / "t").is_file()  # compiled and ran inside the sandbox
    assert (out / "uid").read_text().strip() == "1000"
    assert (out / "caps").read_text().split() == ["CapEff:", "0000000000000000"]


def test_default_seccomp_profile_blocks_the_sandbox(host: Host) -> None:
    argv, out = host.sandbox("default-seccomp")
    result = run(host.unprivileged(*argv, profile=DEFAULT_LIKE_PROFILE))
    assert result.returncode != 0
    assert "namespace" in result.stderr, result.stderr
    assert not (out / "t").exists()


def in_private_mount_namespace(setup: list[str], argv: list[str]) -> list[str]:
    """argv in a new mount namespace (like a container's) after running the ``setup`` mount commands there."""
    script = " && ".join([*setup, 'exec "$@"'])
    return [require("unshare"), "--mount", "--propagation", "private", "sh", "-ec", script, "sh", *argv]


def test_masked_proc_blocks_the_sandbox(host: Host) -> None:
    worker_profile = json.loads(SECCOMP_PROFILE.read_text())
    masks = [f"mount --bind /dev/null {p}" for p in ("/proc/keys", "/proc/timer_list") if Path(p).exists()]
    masks.append("mount --bind -o ro /proc/sys /proc/sys")
    argv, out = host.sandbox("masked-proc")
    result = run(in_private_mount_namespace(masks, host.unprivileged(*argv, profile=worker_profile)))
    assert result.returncode != 0
    assert "Can't mount proc" in result.stderr, result.stderr
    # the same without the masks works: they are the cause
    argv, out = host.sandbox("unmasked-proc")
    result = run(in_private_mount_namespace([], host.unprivileged(*argv, profile=worker_profile)))
    assert result.returncode == 0, result.stderr
    assert (out / "t").is_file()


def test_worker_profile_still_refuses_kernel_attack_surface(host: Host) -> None:
    without = json.loads(run(host.unprivileged(host.python, "-c", PROBE)).stdout)
    confined = run(host.unprivileged(host.python, "-c", PROBE, profile=json.loads(SECCOMP_PROFILE.read_text())))
    assert confined.returncode == 0, confined.stderr
    assert set(json.loads(confined.stdout).values()) == {"EPERM"}
    assert without["keyctl"] == "ok"  # the filter, not the kernel, refuses these
    assert without["setns"] == "EBADF"
