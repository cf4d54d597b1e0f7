"""mangos-farm: plan, build, fetch and verify from-source builds with signed provenance."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from farm import metrics
from farm.errors import ErrorGroup, FarmError
from farm.log import configure
from farm.settings import Settings

# Every top-level command, in the order ``mangos-farm --help`` lists them, with the module (of ``farm.cli``) that
# defines it. A module's ``COMMANDS`` maps each of its command names to the function that adds that command (its
# subcommands, options and handlers) to the top-level subparsers; no module adds to a parser another module made.
# Modules are imported only when their command is built: a command's start-up pays for its own imports only.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("recipes", "recipes"),
    ("plan", "recipes"),
    ("rebuild", "runs"),
    ("env", "env"),
    ("status", "runs"),
    ("workers", "fleet"),
    ("cancel", "runs"),
    ("retry", "runs"),
    ("coordinator", "fleet"),
    ("worker", "fleet"),
    ("serve", "fleet"),
    ("fetch", "artifacts"),
    ("verify", "artifacts"),
    ("keys", "keys"),
    ("config", "keys"),
    ("image", "image"),
    ("trace", "image"),
    ("recheck", "recheck"),
    ("publish", "crossval"),
    ("compare", "crossval"),
    ("bundle", "crossval"),
    ("rebuild-bundle", "crossval"),
    ("admission", "admission"),
    ("audit", "security"),
)

# The global flags, and whether each takes a value (``--home DIR``).
GLOBAL_FLAGS = {"--debug": False, "-v": False, "--verbose": False, "--home": True}


def command_module(module: str) -> ModuleType:
    """The ``farm.cli`` module named in :data:`COMMANDS`."""
    return importlib.import_module(f"farm.cli.{module}")


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs when only global flags precede it and it is one of :data:`COMMANDS`; ``None`` when
    the whole parser is needed (``--help``, no command, an unknown one, an unknown flag first)."""
    known = {name for name, _ in COMMANDS}
    args = iter(argv)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in GLOBAL_FLAGS:
            if GLOBAL_FLAGS[flag] and "=" not in arg:
                next(args, None)
            continue
        return arg if arg in known else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``mangos-farm`` parser: the global flags, then every command of :data:`COMMANDS` in order (or only the
    command ``only``, which parses the same arguments the same way)."""
    p = argparse.ArgumentParser(prog="mangos-farm", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    p.add_argument("--home", help="state directory (env MANGOS_FARM_HOME, default ./.mangos)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS:
        if only is None or name == only:
            command_module(module).COMMANDS[name](sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A farm error is rendered with its id and hint (the traceback only with
    ``--debug``), any other exception as an internal error (70)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(chosen_command(argv)).parse_args(argv)
    configure(verbose=args.verbose, debug=args.debug)
    recorded = metrics.recording(False)  # a command exports none; one that serves them (coordinator) turns it on
    try:
        overrides: dict[str, Any] = {"home": Path(args.home) if args.home else None}
        if getattr(args, "workers", None):
            overrides["workers"] = args.workers
        settings = Settings.from_env(**overrides)
        rc: int = args.handler(args, settings)
        return rc
    except ErrorGroup as exc:
        if args.debug:
            raise
        print(exc.render(), file=sys.stderr)
        print(f"{len(exc.errors)} problem(s); nothing was changed", file=sys.stderr)
        return exc.exit_code
    except FarmError as exc:
        if args.debug:
            raise
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mangos-farm ... | head`: the reader has gone, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    except Exception as exc:  # a bug in the farm: say so plainly, keep the traceback for --debug
        if args.debug:
            raise
        print(
            f"error[E-INTERNAL]: {type(exc).__name__}: {exc}\n"
            "  hint: this is a bug in mangos-farm; rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 70
    finally:
        metrics.recording(recorded)  # as it was, for a caller in the same process (tests)


if __name__ == "__main__":
    sys.exit(main())
