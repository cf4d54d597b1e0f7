"""``env build|list``: pinned Debian build environments, made with mmdebstrap and recorded by digest."""

from __future__ import annotations

import argparse
from pathlib import Path

from farm.cli.common import Subparsers, add_command, add_group, json_flag, print_json
from farm.settings import Settings


def cmd_env_build(args: argparse.Namespace, settings: Settings) -> int:
    from farm.envs.debian import build_env, find_spec
    from farm.store import open_store

    spec = find_spec(args.name, Path(args.envs))
    store = open_store(settings.store_url)
    if args.if_missing:
        from farm.envs.debian import load_records

        made = [r for r in load_records(settings.home / "envs") if r.name == spec.name and store.has_blob(r.digest)]
        if made:
            print(f"environment {spec.name}: sha256 {made[0].digest} (already made; --if-missing)")
            return 0
    record = build_env(spec, store, settings.work_dir / "envs", records_dir=settings.home / "envs")
    if args.json:
        print_json(record.to_json() | {"package_count": len(record.packages)})
        return 0
    print(f"environment {record.name}: sha256 {record.digest}")
    print(
        f"  {len(record.packages)} packages, {record.size / 1e6:.1f} MB, made in {record.seconds:.1f}s "
        f"({spec.distribution} {spec.suite} {spec.architecture}, {spec.variant})"
    )
    print(f"  record: blob {record.record} and {settings.home / 'envs' / (record.name + '.json')}")
    return 0


def cmd_env_list(args: argparse.Namespace, settings: Settings) -> int:
    from farm.envs.debian import load_records

    records = load_records(settings.home / "envs")
    if args.json:
        print_json([r.to_json() | {"package_count": len(r.packages)} for r in records])
        return 0
    if not records:
        print("no environments built yet (make one with 'mangos-farm env build bookworm-amd64')")
    for r in records:
        where = f"{r.spec.get('distribution')} {r.spec.get('suite')} {r.spec.get('architecture')}"
        print(f"{r.name}  {r.digest}  {len(r.packages)} packages  {r.size / 1e6:.1f} MB  ({where})")
    return 0


def add_env(sub: Subparsers) -> None:
    env = add_group(sub, "env", "pinned build environments", "env_cmd")
    sp = add_command(
        env, "build", cmd_env_build, "make a pinned build environment with mmdebstrap and record it by digest"
    )
    sp.add_argument("name", help="an environment in the envs directory (e.g. bookworm-amd64) or a .toml file")
    sp.add_argument("--envs", default="envs", help="directory of environment definitions (default envs/)")
    sp.add_argument("--if-missing", action="store_true", help="keep an environment already made into this store")
    json_flag(sp)
    sp = add_command(env, "list", cmd_env_list, "the environments built on this machine, with their digests")
    json_flag(sp)


COMMANDS = {"env": add_env}
