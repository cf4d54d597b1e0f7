"""``keys generate --release [--if-missing]`` through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.cli.main import main
from farm.trust.release_keys import ReleaseKeys

pytestmark = pytest.mark.unit


def test_release_keys_are_made_once_and_kept_with_if_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(tmp_path)]
    assert main([*home, "keys", "generate", "--release"]) == 0
    keys = ReleaseKeys(tmp_path / "release").check()
    before = keys.db_key.read_bytes()
    assert main([*home, "keys", "generate", "--release"]) == 2  # never replaced by accident
    assert "E-KEY-EXISTS" in capsys.readouterr().err
    assert main([*home, "keys", "generate", "--release", "--if-missing"]) == 0
    assert "kept" in capsys.readouterr().out and keys.db_key.read_bytes() == before
    keys.db_key.unlink()  # a partial set is explained, not silently completed with a new key
    assert main([*home, "keys", "generate", "--release", "--if-missing"]) == 2
    err = capsys.readouterr().err
    assert "E-RELEASE-KEY" in err and "db.key" in err
