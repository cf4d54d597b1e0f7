"""UEFI firmware with this organization's Secure Boot keys enrolled (for ``image boot`` and the boot tests).

OVMF ships an empty variable store (Secure Boot in setup mode, i.e. off). ``virt-fw-vars`` (python virt-firmware)
writes PK, KEK and db into a copy of it and turns Secure Boot on, so the firmware then runs exactly the EFI binaries
signed with our db key and refuses everything else, including Microsoft-signed ones. The release db cert doubles as
PK and KEK here: a test machine has no separate platform owner, and only db decides what boots.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from farm.errors import E, FarmError
from farm.run import run

OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = OVMF_DIR / "OVMF_CODE_4M.secboot.fd"
OVMF_VARS = OVMF_DIR / "OVMF_VARS_4M.fd"

# Owner GUID recorded with each enrolled certificate (any stable GUID; this one names "MANGOS farm").
OWNER_GUID = "5d6b2b1c-3f2a-4e0e-9a53-4d414e474f53"


@dataclass(frozen=True)
class Firmware:
    """The pair qemu needs: read-only code (with SMM Secure Boot) and a writable vars copy."""

    code: Path
    vars: Path
    secure_boot: bool


def virt_fw_vars() -> str:
    """virt-fw-vars from the farm's own environment (pip's virt-firmware), else from PATH."""
    candidate = Path(sys.executable).with_name("virt-fw-vars")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("virt-fw-vars")
    if found is None:
        raise FarmError(E.TOOL_MISSING, "virt-fw-vars is not installed", hint="pip install virt-firmware (make setup)")
    return found


def enroll_argv(tool: str, *, template: Path, out: Path, db_certs: tuple[Path, ...]) -> list[str]:
    """PK and KEK from the first cert, every cert into db, Secure Boot on, no Microsoft keys."""
    if not db_certs:
        raise FarmError(E.IMAGE_INPUT, "at least one db certificate is needed to enroll Secure Boot keys")
    argv = [tool, "--input", str(template), "--output", str(out), "--no-microsoft"]
    argv += ["--set-pk", OWNER_GUID, str(db_certs[0]), "--add-kek", OWNER_GUID, str(db_certs[0])]
    for cert in db_certs:
        argv += ["--add-db", OWNER_GUID, str(cert)]
    return [*argv, "--secure-boot"]


def _check_ovmf() -> None:
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.exists():
            raise FarmError(E.TOOL_MISSING, f"{path} is missing", hint="apt-get install ovmf")


def enrolled_firmware(out_vars: Path, *, db_certs: tuple[Path, ...]) -> Firmware:
    """A vars file at ``out_vars`` with our keys enrolled and Secure Boot on."""
    _check_ovmf()
    run(enroll_argv(virt_fw_vars(), template=OVMF_VARS, out=out_vars, db_certs=db_certs))
    return Firmware(code=OVMF_CODE, vars=out_vars, secure_boot=True)


def setup_mode_firmware(out_vars: Path) -> Firmware:
    """The stock empty store (Secure Boot off): what an image must refuse to run on."""
    _check_ovmf()
    shutil.copyfile(OVMF_VARS, out_vars)
    return Firmware(code=OVMF_CODE, vars=out_vars, secure_boot=False)


def enrolled_certs(vars_file: Path) -> str:
    """virt-fw-vars' printout of a vars store (for checks and diagnostics)."""
    return run([virt_fw_vars(), "--input", str(vars_file), "--print", "--verbose"]).text
