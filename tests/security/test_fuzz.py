"""Hostile input in general: property-based fuzzing of every parser that reads outside data.

The recipe loader (TOML text and parsed documents), the .dsc importer's parsers (a .dsc and its file list, a
Sources index, a debian/changelog), the peer attestation-log reader (entries and signed heads), DSSE envelopes and
signed task messages. Whatever the input: a result or a FarmError with a stable id, never another exception, never
a hang (hypothesis' deadline). Bounded: a few hundred examples each, the whole module in well under a minute.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from farm.crossval.log import ENTRIES, HEAD, InputsKey, Log, parse_entries, read_verified, verify_head
from farm.errors import FarmError
from farm.recipes import load_file, parse
from farm.sources import dsc
from farm.trust import tasksig
from farm.trust.keys import BuilderKey, generate
from farm.trust.provenance import sign, statement, verify_envelope

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)

VALID_RECIPE = """name = "hello"
version = "1.0"
outputs = ["bin/hello"]
build-depends = ["zlib"]

[source]
git = "https://example.invalid/hello.git"
commit = "0123456789abcdef0123456789abcdef01234567"
ref = "v1.0"

[build]
steps = ["make", "install -D hello $OUT/bin/hello"]
env = { CFLAGS = "-O2" }
"""

VALID_DSC = """Format: 3.0 (quilt)
Source: demo
Version: 1.0-1
Checksums-Sha256:
 {sha} 8 demo_1.0.orig.tar.gz
"""

CHANGELOG = """hello (2.10-3) unstable; urgency=medium

  * Upload.

 -- Maintainer <m@example.invalid>  Sun, 01 Jan 2023 12:00:00 +0100
"""

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
recipe_keys = st.sampled_from(
    ["name", "version", "outputs", "build-depends", "source", "build", "description", "steps", "env", "git",
     "commit", "ref", "dsc", "kind", "environment", "archive"]
)  # fmt: skip
recipe_docs = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(recipe_keys | st.text(max_size=8), inner, max_size=6),
    max_leaves=20,
)


def mutations(base: str) -> st.SearchStrategy[str]:
    """The valid text with a span replaced, deleted or duplicated: near-valid inputs reach deep into a parser."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        i = draw(st.integers(0, len(base)))
        j = draw(st.integers(i, min(len(base), i + 20)))
        how = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if how == "delete":
            return base[:i] + base[j:]
        if how == "duplicate":
            return base[:j] + base[i:j] + base[j:]
        return base[:i] + draw(st.text(max_size=20)) + base[j:]

    return mutate()


def only_farm_errors(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except FarmError as exc:
        assert exc.code.startswith("E-") and exc.message, exc
        return None


# -- recipes -----------------------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.text(max_size=400), mutations(VALID_RECIPE), st.binary(max_size=200).map(lambda b: b.hex())))
@example("\x00")
@example('name = "a"\n[source]\ngit = 1\n[build]\nsteps = [[]]\n')
def test_recipe_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.toml"
        path.write_text(text, errors="surrogatepass")
        only_farm_errors(load_file, path)


@FUZZ
@given(st.binary(max_size=300))
def test_recipe_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.toml"
        path.write_bytes(data)
        only_farm_errors(load_file, path)


@FUZZ
@given(st.dictionaries(recipe_keys, recipe_docs, max_size=8))
def test_recipe_documents(doc: dict[str, Any]) -> None:
    only_farm_errors(parse, doc, Path("fuzz.toml"))


# -- .dsc importer -----------------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.text(max_size=400), mutations(VALID_DSC.format(sha="0" * 64))))
@example("Checksums-Sha256:\n x\n")
@example("Checksums-Sha256:\n abc notanumber f\n")
@example("Checksums-Sha256:\n abc 1 ../../etc/passwd\n")
def test_dsc_file_list(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "demo_1.0-1.dsc"
        path.write_text(text, errors="surrogatepass")
        (Path(d) / "demo_1.0.orig.tar.gz").write_bytes(b"upstream")
        only_farm_errors(dsc.check_dsc_files, path)


@FUZZ
@given(st.text(max_size=400), st.text(max_size=12), st.text(max_size=12))
@example("Package: demo\nVersion: 1\nChecksums-Sha256:\n x y z.dsc\n", "demo", "1")
def test_sources_index(text: str, name: str, version: str) -> None:
    only_farm_errors(dsc.index_entries, text, name, version, "Debian bookworm")


@FUZZ
@given(st.one_of(st.text(max_size=300), mutations(CHANGELOG)))
def test_changelog(text: str) -> None:
    only_farm_errors(dsc.changelog_date, text)


@FUZZ
@given(st.text(max_size=40), st.text(max_size=40))
def test_source_specs(name: str, version: str) -> None:
    only_farm_errors(dsc.check_spec, name, version)


# -- the peer attestation log ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> BuilderKey:
    return generate(tmp_path_factory.mktemp("fuzz-keys"))


def _stmt(i: int) -> dict[str, Any]:
    return statement(
        subjects=[(f"pkg{i}", f"{i:064x}")], recipe={"name": f"pkg{i}"}, recipe_digest="r" * 64,
        source_url="https://example.invalid/x.git", commit=f"{i:040x}", tree="t" * 40, environment="e" * 64,
        dependencies=[], builder_id="b", build_key="k" * 64, started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )  # fmt: skip


@pytest.fixture(scope="module")
def peer_log(tmp_path_factory: pytest.TempPathFactory, key: BuilderKey) -> tuple[bytes, bytes]:
    root = tmp_path_factory.mktemp("peer-log")
    log = Log.open(root)
    for i in range(3):
        stmt = _stmt(i)
        log.append(
            key=InputsKey.from_statement(stmt, "amd64"), recipe=f"pkg{i}", version="1.0", build_key=f"{i:064x}",
            outputs={f"pkg{i}": f"{i:064x}"}, envelope=sign(stmt, key),
        )  # fmt: skip
    log.sign(key)
    return (root / ENTRIES).read_bytes(), (root / HEAD).read_bytes()


@FUZZ
@given(data=st.data())
def test_peer_log_entries(peer_log: tuple[bytes, bytes], key: BuilderKey, data: st.DataObject) -> None:
    entries, head = peer_log
    text = data.draw(st.one_of(mutations(entries.decode()), st.text(max_size=300)))
    only_farm_errors(parse_entries, text.encode(errors="surrogatepass"), "peer")
    only_farm_errors(read_verified, text.encode(errors="surrogatepass"), head, key.public, "peer")


@FUZZ
@given(data=st.data())
def test_peer_log_head(peer_log: tuple[bytes, bytes], key: BuilderKey, data: st.DataObject) -> None:
    entries, head = peer_log
    text = data.draw(st.one_of(mutations(head.decode()), st.text(max_size=200)))
    only_farm_errors(read_verified, entries, text.encode(errors="surrogatepass"), key.public, "peer")
    try:
        envelope = json.loads(text)
    except ValueError:
        return
    only_farm_errors(verify_head, envelope, key.public, "peer")


def test_the_unmutated_peer_log_reads(peer_log: tuple[bytes, bytes], key: BuilderKey) -> None:
    entries, _head = read_verified(*peer_log, key.public, "peer")
    assert [e.recipe for e in entries] == ["pkg0", "pkg1", "pkg2"]


# -- DSSE envelopes and task messages ----------------------------------------------------------------------------
@FUZZ
@given(json_values, st.binary(max_size=40))
def test_dsse_envelopes(value: Any, junk: bytes) -> None:
    only_farm_errors(verify_envelope, value, [])
    envelope = {"payloadType": "application/vnd.in-toto+json", "payload": base64.b64encode(junk).decode(),
                "signatures": value}  # fmt: skip
    only_farm_errors(verify_envelope, envelope, [])


@FUZZ
@given(json_values, json_values)
def test_task_signatures(key: BuilderKey, request: Any, signature: Any) -> None:
    with pytest.raises(FarmError):
        tasksig.verify("task-1", request, signature, key.public)
