"""``image boot RAW``: boot an image in QEMU/OVMF with our Secure Boot keys, report from the serial console.

Apart from the assembly commands in ``farm.cli.image``, whose ``image`` group adds this command with
:func:`add_boot`. A boot never writes the image; ``--machine`` boots a persistent writable copy of it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from farm.cli.common import Subparsers, add_command, json_flag, print_json, release_dir
from farm.errors import E, FarmError
from farm.settings import Settings


def cmd_image_boot(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image import boot, firmware

    image = Path(args.image)
    if not image.is_file():
        raise FarmError(E.IMAGE_INPUT, f"no image at {image}", hint="build one with 'mangos-farm image build'")
    if args.machine:
        return _boot_machine(args, settings, image)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mangos-boot-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.no_secure_boot:
        fw = firmware.setup_mode_firmware(work / "OVMF_VARS.fd")
    else:
        fw = firmware.enrolled_firmware(work / "OVMF_VARS.fd", db_certs=_db_certs(args, settings))
    if args.tpm:
        with boot.software_tpm(work / "tpm") as tpm:
            result = boot.boot(image, fw, timeout=args.timeout, workdir=work, tpm_socket=tpm)
    else:
        result = boot.boot(image, fw, timeout=args.timeout, workdir=work)
    expected = boot.Outcome.REFUSED_INSECURE if args.no_secure_boot else boot.Outcome.BOOTED
    return _report(args, result, expected)


def prepare_machine(image: Path, machine: Path, db_certs: tuple[Path, ...]) -> tuple[Path, Any]:
    """A persistent machine in ``machine``: its own writable (sparse) copy of the image's disk and its firmware
    variables, both made on first use and reused after, so what first boot wrote (repart's partitions, sealed to the
    machine's TPM in ``machine/tpm``) is there on the next boot. The image itself is never written."""
    from farm.image import firmware, gpt

    machine.mkdir(parents=True, exist_ok=True)
    disk, vars_file = machine / "disk.raw", machine / "OVMF_VARS.fd"
    if not disk.exists():
        gpt.sparse_copy(image, disk)
    if vars_file.exists():
        fw = firmware.Firmware(code=firmware.OVMF_CODE, vars=vars_file, secure_boot=True)
    else:
        fw = firmware.enrolled_firmware(vars_file, db_certs=db_certs)
    return disk, fw


def _boot_machine(args: argparse.Namespace, settings: Settings, image: Path) -> int:
    from farm.image import boot

    if args.no_secure_boot:
        raise FarmError(
            E.IMAGE_INPUT, "--machine boots with Secure Boot on", hint="drop --no-secure-boot, or drop --machine"
        )
    machine = Path(args.machine)
    disk, fw = prepare_machine(image, machine, _db_certs(args, settings))
    n = len(list(machine.glob("boot-*"))) + 1
    with boot.software_tpm(machine / "tpm") as tpm:
        result = boot.boot(disk, fw, timeout=args.timeout, workdir=machine / f"boot-{n}", tpm_socket=tpm, writable=True)
    return _report(args, result, boot.Outcome.BOOTED)


def _db_certs(args: argparse.Namespace, settings: Settings) -> tuple[Path, ...]:
    certs = tuple(Path(c) for c in args.db_cert) if args.db_cert else (_default_db_cert(args, settings),)
    for cert in certs:
        if not cert.is_file():
            raise FarmError(
                E.IMAGE_INPUT,
                f"no Secure Boot db certificate at {cert}",
                hint="pass --db-cert, or generate release keys with 'mangos-farm keys generate --release'",
            )
    return certs


def _report(args: argparse.Namespace, result: Any, expected: Any) -> int:
    if args.json:
        print_json({**result.to_json(), "expected": str(expected)})
    else:
        sb = "off" if args.no_secure_boot else "on"
        print(f"outcome   {result.outcome} after {result.seconds:.1f}s (Secure Boot {sb})")
        print(f"evidence  {result.evidence}")
        print(f"serial    {result.serial_log}")
        if result.outcome != expected:
            print("--- end of the serial console ---")
            print(result.serial_tail[-2000:])
    return 0 if result.outcome == expected else 1


def _default_db_cert(args: argparse.Namespace, settings: Settings) -> Path:
    from farm.trust import release_keys

    return release_keys.ReleaseKeys(release_dir(args.release_keys, settings)).db_cert


def add_boot(image: Subparsers) -> None:
    """Add ``boot`` to the subparsers of the ``image`` group."""
    sp = add_command(image, "boot", cmd_image_boot, "boot an image in QEMU/OVMF with our Secure Boot keys enrolled")
    sp.add_argument("image", help="mangos_VERSION.raw (attached read-only: a boot never changes it)")
    sp.add_argument("--release-keys", metavar="DIR", help="whose db.crt to enroll (default HOME/release)")
    sp.add_argument("--db-cert", action="append", help="enroll this db certificate instead (PEM); repeatable")
    sp.add_argument("--no-secure-boot", action="store_true", help="boot with Secure Boot off (the image must refuse)")
    sp.add_argument("--timeout", type=float, default=240.0, help="seconds before giving up (default 240; TCG is slow)")
    sp.add_argument("--keep", metavar="DIR", help="keep the serial log and firmware vars here")
    sp.add_argument("--tpm", action="store_true", help="attach a software TPM (swtpm) for the Encrypt=tpm2 first boot")
    sp.add_argument(
        "--machine",
        metavar="DIR",
        help="a persistent machine: its own writable copy of the disk, firmware vars and TPM in DIR, made on first "
        "use and kept, so first boot's encrypted swap, /var and /var/tmp are there on the next boot",
    )
    json_flag(sp)
