"""Run a command under a seccomp profile in the OCI/Docker JSON format, the way a container runtime would.

    python seccomp_exec.py PROFILE.json -- COMMAND [ARG...]

Used by test_privileges.py to check, on this machine, what the worker container's profile allows: the runtime
(runc, crun) compiles the same JSON with libseccomp and loads it before the container's first process starts.
Syscall names this architecture does not have are skipped, as runc does. Loading a filter needs no privilege
under no_new_privs (set it first, e.g. with ``setpriv --no-new-privs``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from pathlib import Path
from typing import Any

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_ACT_KILL_PROCESS = 0x80000000
OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
EPERM = 1


class ArgCmp(ctypes.Structure):
    _fields_ = (  # struct scmp_arg_cmp
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return SCMP_ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return SCMP_ACT_ERRNO | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
        return SCMP_ACT_KILL_PROCESS
    raise ValueError(f"unsupported seccomp action {name!r}")


def load(profile: dict[str, Any]) -> None:
    """Compile ``profile`` with libseccomp and load it into this process (inherited by everything it execs)."""
    path = ctypes.util.find_library("seccomp")
    if path is None:
        raise OSError("libseccomp is not installed")
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    )
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    for rule in profile.get("syscalls", []):
        action = _action(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue  # libseccomp refuses rules that repeat the default action
        args = [ArgCmp(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in rule.get("args") or []]
        array = (ArgCmp * len(args))(*args) if args else None
        for name in rule["names"]:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a syscall on this architecture
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(args), array)
            if rc != 0:
                raise OSError(-rc, f"seccomp_rule_add({name}) failed")
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load failed (set no_new_privs first)")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: seccomp_exec.py PROFILE.json -- COMMAND [ARG...]")
    load(json.loads(Path(argv[0]).read_text()))
    os.execvp(argv[2], argv[2:])  # replaces this process; argv is a list


if __name__ == "__main__":
    main(sys.argv[1:])
