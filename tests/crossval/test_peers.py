"""peers.toml parsing: every problem at once, each naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.crossval.peers import load_peers
from farm.errors import E, ErrorGroup, FarmError
from farm.trust.keys import generate

pytestmark = pytest.mark.unit


def test_valid_peers_resolve_relative_paths(tmp_path: Path) -> None:
    generate(tmp_path / "acme")
    (tmp_path / "peers.toml").write_text(
        '[peers.acme]\nkey = "acme/builder.pub"\nlog = "logs/acme"\n'
        '[peers.globex]\nkey = "acme/builder.pub"\nlog = "https://globex.example/log/"\n'
    )
    peers = load_peers(tmp_path / "peers.toml")
    assert [p.name for p in peers] == ["acme", "globex"]
    assert peers[0].log == str(tmp_path / "logs" / "acme")
    assert peers[1].log == "https://globex.example/log/"


def test_every_problem_is_reported_with_its_field(tmp_path: Path) -> None:
    (tmp_path / "peers.toml").write_text(
        'color = 1\n[peers.self]\nkey = "x"\nlog = "y"\n'
        '[peers.a]\nlog = 3\nextra = 1\n[peers.b]\nkey = "nope.pem"\nlog = "d"\n'
    )
    with pytest.raises(ErrorGroup) as err:
        load_peers(tmp_path / "peers.toml")
    fields = sorted(e.field or "" for e in err.value.errors)
    assert fields == ["color", "peers.a.extra", "peers.a.key", "peers.a.log", "peers.b.key", "peers.self"]
    assert all(e.code == E.PEERS_CONFIG and e.file == str(tmp_path / "peers.toml") for e in err.value.errors)
    assert all(e.hint for e in err.value.errors)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "peers.toml").write_text("[peers.a\n")
    with pytest.raises(FarmError) as err:
        load_peers(tmp_path / "peers.toml")
    assert err.value.code == E.PEERS_CONFIG and err.value.file == str(tmp_path / "peers.toml")
