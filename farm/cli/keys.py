"""``keys generate|export-public|trust|revoke|list`` and ``config``: this organization's keys, its keyring of
builder keys, and the settings the farm runs with.

``keys generate`` makes the builder key pair; with ``--release`` it makes the release keys (verity signing, Secure
Boot db) instead. Trusting and revoking a builder key is recorded in the audit log.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from farm.cli.common import Subparsers, add_command, add_group, json_flag, print_json, release_dir
from farm.settings import Settings, describe, redact


def cmd_keys_generate(args: argparse.Namespace, settings: Settings) -> int:
    if args.release is not None:
        return _generate_release(args, settings)
    from farm.trust import keys as keymod

    if args.if_missing and (settings.keys_dir / keymod.PRIVATE_NAME).exists():
        key = keymod.load_builder(settings.keys_dir)
        keymod.ensure_coordinator_key(settings.coordinator_keys_dir, settings.keys_dir)  # farms made before it
        print(f"builder key {key.public.keyid} already in {settings.keys_dir}")
        return 0
    key = keymod.generate(settings.keys_dir, force=args.force, coordinator_dir=settings.coordinator_keys_dir)
    print(f"builder key {key.public.keyid} written to {settings.keys_dir}/{keymod.PRIVATE_NAME} (mode 0600)")
    print(f"public key: {settings.keys_dir}/{keymod.PUBLIC_NAME}  (share it: mangos-farm keys export-public)")
    return 0


def _generate_release(args: argparse.Namespace, settings: Settings) -> int:
    from farm.trust import release_keys

    directory = release_dir(args.release, settings)
    if args.if_missing and not args.force and release_keys.ReleaseKeys(directory).exists():
        keys = release_keys.ReleaseKeys(directory).check()  # complete and loadable, or a clear error
        print(f"release keys kept in {keys.dir}:")
    else:
        keys = release_keys.generate(directory, force=args.force)
        print(f"release keys written to {keys.dir} (private keys mode 0600; keep them off the workers):")
    for name in release_keys.NAMES:
        cert = release_keys.load_cert(keys.cert(name))
        print(f"  {name}: {keys.key(name)}  {keys.cert(name)}  sha256:{release_keys.fingerprint(cert)}")
    return 0


def cmd_keys_export(args: argparse.Namespace, settings: Settings) -> int:
    from farm.trust import keys as keymod

    pub = keymod.load_builder(settings.keys_dir).public
    if args.output:
        Path(args.output).write_bytes(pub.pem())
    else:
        sys.stdout.write(pub.pem().decode())
    return 0


def cmd_keys_trust(args: argparse.Namespace, settings: Settings) -> int:
    from farm.trust import audit, keyring

    key = keyring.trust(settings.keys_dir, settings.trusted_keys_dir, Path(args.pem))
    audit.record(audit.audit_path(settings.home), audit.KEY_TRUSTED, who=_who(), what=key.keyid, source=str(args.pem))
    print(f"trusted builder key {key.keyid} ({settings.trusted_keys_dir / (key.keyid[:16] + '.pem')})")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from farm.trust import audit, keyring

    rev = keyring.revoke(settings.keys_dir, args.keyid, args.reason, by=_who())
    audit.record(audit.audit_path(settings.home), audit.KEY_REVOKED, who=rev.by, what=rev.keyid, reason=rev.reason)
    print(f"revoked builder key {rev.keyid} at {rev.time}: {rev.reason}")
    print("everything it signed is refused from now on (fetch, verify, dependencies, results, images)")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from farm.trust import keyring

    rows = keyring.listing(settings.keys_dir, settings.trusted_keys_dir)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        state = f"REVOKED {r['revoked']['time']}: {r['revoked']['reason']}" if "revoked" in r else "trusted"
        print(f"{r['keyid']}  {'own ' if r['own'] else ''}{state}  {r['source']}")
    if not rows:
        print("no builder keys (run 'mangos-farm keys generate', or 'keys trust PEM')")
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    rows = [r | {"value": redact(str(getattr(settings, r["name"])))} for r in describe()]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['env']:<28} {r['value']:<30} {r['help']}")
    return 0


def add_keys(sub: Subparsers) -> None:
    keys = add_group(sub, "keys", "builder keys", "keys_cmd")
    sp = add_command(keys, "generate", cmd_keys_generate, "create this organization's builder key pair")
    sp.add_argument("--force", action="store_true", help="replace an existing key")
    sp.add_argument("--if-missing", action="store_true", help="keep an existing key instead of failing")
    sp.add_argument(
        "--release",
        nargs="?",
        const="",
        metavar="DIR",
        help="make the release keys (verity signing, Secure Boot db) instead; DIR defaults to HOME/release",
    )
    sp = add_command(
        keys, "export-public", cmd_keys_export, "print the builder public key as PEM (SubjectPublicKeyInfo)"
    )
    sp.add_argument("-o", "--output", help="write to this file instead of stdout")
    sp = add_command(keys, "trust", cmd_keys_trust, "add a builder public key (PEM) to this organization's keyring")
    sp.add_argument("pem", help="the builder's public key, as 'keys export-public' writes it")
    sp = add_command(
        keys, "revoke", cmd_keys_revoke, "revoke a builder key: everything it signed is refused from now on"
    )
    sp.add_argument("keyid", help="the key id (sha256 of the public key), see 'keys list'")
    sp.add_argument("--reason", required=True, help="why (recorded with the revocation and in the audit log)")
    sp = add_command(keys, "list", cmd_keys_list, "the builder keyring: trusted and revoked keys")
    json_flag(sp)


def add_config(sub: Subparsers) -> None:
    sp = add_command(sub, "config", cmd_config, "show every setting, its variable and value")
    json_flag(sp)


COMMANDS = {"keys": add_keys, "config": add_config}
