"""What the command modules share: adding a command to a parser, the ``--json`` flag, JSON output, trusted keys,
the built environment imports pin against."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import E, FarmError, StoreError
from farm.settings import Settings

if TYPE_CHECKING:
    from farm.envs.debian import EnvRecord
    from farm.store import Store
    from farm.trust.keys import TrustedKeys

Handler = Callable[[argparse.Namespace, Settings], int]
"""A command's handler: the parsed arguments and the farm's settings in, the exit code out."""

Subparsers = Any
"""The subparsers of a command group (``argparse._SubParsersAction``), to which commands are added."""


def add_command(parent: Subparsers, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    """A command ``name`` under ``parent`` that runs ``handler``; ``help`` is both its summary and its description."""
    sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    sp.set_defaults(handler=handler)
    return sp


def add_group(parent: Subparsers, name: str, help: str, dest: str) -> Subparsers:
    """A command group ``name`` (``mangos-farm keys ...``) whose subcommand is required; its subparsers."""
    return parent.add_parser(name, help=help).add_subparsers(dest=dest, required=True)


def json_flag(sp: argparse.ArgumentParser) -> None:
    """``--json``: the command prints one JSON document instead of text."""
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def print_json(data: Any) -> None:
    """``data`` as indented JSON with sorted keys, the output of every ``--json``."""
    print(json.dumps(data, indent=2, sort_keys=True))


def trusted_keys(settings: Settings, extra: list[str] | None) -> TrustedKeys:
    """The builder keys this farm trusts (its own and its keyring's, none revoked) plus the PEM files in ``extra``."""
    from farm.trust import keys as keymod

    return keymod.trusted_keys(settings.keys_dir, settings.trusted_keys_dir, [Path(k) for k in extra or ()])


def release_dir(value: str | None, settings: Settings) -> Path:
    """The release keys' directory: ``value`` when given, else HOME/release."""
    from farm.trust.release_keys import default_dir

    return Path(value) if value else default_dir(settings.home)


def environment_flags(sp: argparse.ArgumentParser) -> None:
    """``--env`` and ``--envs``: the build environment :func:`built_environment` resolves."""
    sp.add_argument("--env", default="bookworm-amd64", help="the build environment (default bookworm-amd64)")
    sp.add_argument("--envs", default="envs", help="directory of environment definitions (default envs/)")


def built_environment(args: argparse.Namespace, settings: Settings) -> tuple[EnvRecord, Store]:
    """The build environment ``--env`` names, made on this machine and present in the store, with that store (what
    ``recipes import`` and ``recipes update`` resolve and pin against)."""
    from farm.envs.debian import find_spec, load_records
    from farm.store import open_store

    record = {r.name: r for r in load_records(settings.home / "envs")}.get(args.env)
    if record is None:
        find_spec(args.env, Path(args.envs))  # an unknown name fails here, with the list of definitions
        raise FarmError(
            E.ENV_UNKNOWN,
            f"the build environment '{args.env}' has not been built on this machine",
            file=settings.home / "envs" / f"{args.env}.json",
            hint=f"make it first: mangos-farm env build {args.env} --envs {args.envs}",
        )
    store = open_store(settings.store_url)
    if not store.has_blob(record.digest):
        raise StoreError(
            E.STORE_MISSING,
            f"the tarball of environment '{args.env}' (sha256 {record.digest}) is not in the store {store.url}",
            hint=f"rebuild it: mangos-farm env build {args.env} --envs {args.envs}",
        )
    return record, store
