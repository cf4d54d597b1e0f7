"""The command surface is a contract: every command's ``--help`` matches the golden file taken from the code as it
was before the farm/ layout moved into one room per stage. Regenerate deliberately (a new flag is a new surface)
with ``python -m tests.cli.test_help_golden --write``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "help"
COLUMNS = "100"


def help_texts() -> dict[str, str]:
    """Every command path of ``mangos-farm`` (``mangos-farm_image_build``) with its ``--help`` text at 100 columns."""
    os.environ["COLUMNS"] = COLUMNS
    from farm.cli.main import build_parser

    def walk(p: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[str, str]]:
        yield "_".join(["mangos-farm", *path]), p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])

    return dict(walk(build_parser(), []))


@pytest.fixture(scope="module")
def texts(monkeypatch_module: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch_module.setenv("COLUMNS", COLUMNS)
    return help_texts()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_golden_command_still_exists_and_no_command_is_new(texts: dict[str, str]) -> None:
    golden = {p.stem for p in GOLDEN.glob("*.txt")}
    assert len(golden) > 30
    assert sorted(texts) == sorted(golden)


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.txt")))
def test_help_is_byte_identical(texts: dict[str, str], name: str) -> None:
    assert texts.get(name) == (GOLDEN / f"{name}.txt").read_text()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.cli.test_help_golden --write")
    for old in GOLDEN.glob("*.txt"):
        old.unlink()
    for name, text in help_texts().items():
        (GOLDEN / f"{name}.txt").write_text(text)
