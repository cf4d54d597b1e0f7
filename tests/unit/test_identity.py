"""Canonical JSON and build keys: every input that can change a build changes its key, nothing else does."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.identity import (
    KEY_SCHEMA,
    NotCanonical,
    build_key,
    build_key_inputs,
    canonical_json,
    digest_of,
    sha256_hex,
)
from farm.recipes import Patch, Recipe, Source

pytestmark = pytest.mark.unit

RECIPE: dict[str, Any] = {
    "name": "hello",
    "version": "1.0",
    "description": "",
    "build-depends": ["zlib"],
    "outputs": ["bin/hello"],
    "source": {"git": "https://example.com/hello.git", "commit": "c" * 40},
    "build": {"steps": ["make"], "env": {}},
}
COMMIT = "c" * 40
TREE = "7" * 40
ENVIRONMENT = "e" * 64
DEPENDENCIES: dict[str, dict[str, str]] = {"zlib": {"libz.tar": "d" * 64}}


def key(**changes: Any) -> str:
    args: dict[str, Any] = {
        "recipe": copy.deepcopy(RECIPE),
        "commit": COMMIT,
        "tree": TREE,
        "environment": ENVIRONMENT,
        "dependencies": copy.deepcopy(DEPENDENCIES),
    }
    args.update(changes)
    return build_key(**args)


# -- canonical_json --------------------------------------------------------------------------------------------
def test_keys_sorted_and_no_whitespace() -> None:
    value = {"b": 1, "a": [1, 2, {"d": True, "c": None}], "A": "x"}
    assert canonical_json(value) == b'{"A":"x","a":[1,2,{"c":null,"d":true}],"b":1}'


def test_nested_keys_sorted_at_every_level() -> None:
    assert canonical_json({"z": {"y": {"b": 0, "a": 0}}}) == b'{"z":{"y":{"a":0,"b":0}}}'


def test_non_ascii_is_kept_as_utf8() -> None:
    out = canonical_json({"name": "zürich ✓ 雪"})
    assert out == '{"name":"zürich ✓ 雪"}'.encode()
    assert b"\\u" not in out
    assert out.decode("utf-8") == '{"name":"zürich ✓ 雪"}'


def test_control_characters_are_escaped() -> None:
    assert canonical_json('a\nb\t"c\\') == b'"a\\nb\\t\\"c\\\\"'


def test_insertion_order_does_not_matter() -> None:
    a = {"x": 1, "y": {"p": [1], "q": "s"}}
    b = {"y": {"q": "s", "p": [1]}, "x": 1}
    assert canonical_json(a) == canonical_json(b)


def test_tuples_are_lists() -> None:
    assert canonical_json({"t": (1, "a")}) == b'{"t":[1,"a"]}'


def test_scalars() -> None:
    assert canonical_json(None) == b"null"
    assert canonical_json(True) == b"true"
    assert canonical_json(False) == b"false"
    assert canonical_json(-12) == b"-12"
    assert canonical_json(2**70) == str(2**70).encode()
    assert canonical_json("") == b'""'


@pytest.mark.parametrize(
    "value",
    [1.0, 0.5, float("nan"), float("inf"), {"a": 1.5}, [1, [2, 3.0]], {"a": {"b": [0.1]}}],
)
def test_floats_are_rejected(value: Any) -> None:
    with pytest.raises(NotCanonical, match="floats are not allowed"):
        canonical_json(value)


def test_rejection_names_where() -> None:
    with pytest.raises(NotCanonical, match=r"^\$\.a\[1\]\.b: floats"):
        canonical_json({"a": [0, {"b": 2.5}]})


@pytest.mark.parametrize("value", [{1: "a"}, {("t",): 1}, b"bytes", {"s": {1, 2}}, object()])
def test_non_json_values_are_rejected(value: Any) -> None:
    with pytest.raises(NotCanonical):
        canonical_json(value)


def test_not_canonical_is_a_type_error() -> None:
    assert issubclass(NotCanonical, TypeError)


def test_digest_of_is_sha256_of_canonical_json() -> None:
    value = {"b": [1, "é"], "a": None}
    expected = hashlib.sha256('{"a":null,"b":[1,"é"]}'.encode()).hexdigest()
    assert digest_of(value) == expected
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# -- build keys ------------------------------------------------------------------------------------------------
def test_build_key_is_deterministic() -> None:
    assert key() == key()
    assert len(key()) == 64
    assert all(c in "0123456789abcdef" for c in key())


def test_build_key_ignores_mapping_order() -> None:
    recipe = dict(reversed(list(RECIPE.items())))
    deps = {"zlib": {"libz.tar": "d" * 64}, "abc": {"x": "1" * 64}}
    deps_reversed = dict(reversed(list(deps.items())))
    assert key(recipe=recipe) == key()
    assert key(dependencies=deps) == key(dependencies=deps_reversed)


def test_build_key_golden_value() -> None:
    """The key computed independently: the exact canonical document written out by hand, hashed."""
    document = (
        "{"
        '"dependencies":{"zlib":{"libz.tar":"' + "d" * 64 + '"}},'
        '"environment":"' + "e" * 64 + '",'
        '"recipe":{'
        '"build":{"env":{},"steps":["make"]},'
        '"build-depends":["zlib"],'
        '"description":"",'
        '"name":"hello",'
        '"outputs":["bin/hello"],'
        '"source":{"commit":"' + "c" * 40 + '","git":"https://example.com/hello.git"},'
        '"version":"1.0"'
        "},"
        '"schema":"https://mangos.dev/farm/build-key/v1",'
        '"source":{"commit":"' + "c" * 40 + '","tree":"' + "7" * 40 + '"}'
        "}"
    ).encode("utf-8")
    by_hand = hashlib.sha256(document).hexdigest()
    by_json = hashlib.sha256(
        json.dumps(
            {
                "schema": KEY_SCHEMA,
                "recipe": RECIPE,
                "source": {"commit": COMMIT, "tree": TREE},
                "environment": ENVIRONMENT,
                "dependencies": DEPENDENCIES,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
    ).hexdigest()
    assert by_hand == by_json
    assert key() == by_hand


def test_build_key_inputs_document() -> None:
    doc = build_key_inputs(RECIPE, COMMIT, TREE, ENVIRONMENT, DEPENDENCIES)
    assert doc == {
        "schema": KEY_SCHEMA,
        "recipe": RECIPE,
        "source": {"commit": COMMIT, "tree": TREE},
        "environment": ENVIRONMENT,
        "dependencies": DEPENDENCIES,
    }
    assert digest_of(doc) == key()


def _recipe_with(path: str, value: Any) -> dict[str, Any]:
    recipe = copy.deepcopy(RECIPE)
    *parents, last = path.split(".")
    target = recipe
    for p in parents:
        target = target[p]
    target[last] = value
    return recipe


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "hello2"),
        ("version", "1.1"),
        ("description", "changed"),
        ("build-depends", ["zlib", "openssl"]),
        ("outputs", ["bin/hello", "bin/bye"]),
        ("source.git", "https://example.com/fork.git"),
        ("source.commit", "b" * 40),
        ("build.steps", ["make -j1"]),
        ("build.env", {"CFLAGS": "-O2"}),
    ],
)
def test_each_recipe_field_changes_the_key(field: str, value: Any) -> None:
    assert key(recipe=_recipe_with(field, value)) != key()


@pytest.mark.parametrize(
    "changes",
    [
        {"commit": "b" * 40},
        {"tree": "8" * 40},
        {"environment": "f" * 64},
        {"dependencies": {"zlib": {"libz.tar": "0" * 64}}},  # a dependency's output digest
        {"dependencies": {"zlib": {"libz2.tar": "d" * 64}}},  # a dependency's output name
        {"dependencies": {"zlib2": {"libz.tar": "d" * 64}}},  # the dependency's name
        {"dependencies": {"zlib": {"libz.tar": "d" * 64}, "extra": {"x": "1" * 64}}},
        {"dependencies": {}},
    ],
)
def test_each_other_input_changes_the_key(changes: dict[str, Any]) -> None:
    assert key(**changes) != key()


def test_keys_of_all_variants_are_distinct() -> None:
    variants = [
        key(),
        key(commit="b" * 40),
        key(tree="8" * 40),
        key(environment="f" * 64),
        key(dependencies={}),
        key(recipe=_recipe_with("version", "2")),
    ]
    assert len(set(variants)) == len(variants)


def test_build_key_rejects_floats_in_the_recipe() -> None:
    with pytest.raises(NotCanonical):
        key(recipe=_recipe_with("version", 1.0))


def test_the_image_signature_partition_is_canonical_json(tmp_path: Path) -> None:
    """The signature partition's JSON goes through canonical_json: the bytes are those it always had."""
    from farm.image import signature
    from farm.trust.release_keys import fingerprint, load_cert
    from tests.image.bootkeys import make_db_key

    cert = load_cert(make_db_key(tmp_path, "t")[1])
    der = b"\x00\x01signature"
    doc = {
        "rootHash": "ab" * 32,
        "certificateFingerprint": fingerprint(cert),
        "signature": base64.b64encode(der).decode(),
    }
    before = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert signature.partition_bytes("ab" * 32, der, cert).rstrip(b"\0") == before


def test_a_recipe_without_patches_keeps_the_golden_key_and_each_patch_changes_it() -> None:
    recipe = Recipe(
        name="hello",
        version="1.0",
        source=Source(git="https://example.com/hello.git", commit=COMMIT),
        steps=("make",),
        outputs=("bin/hello",),
        build_depends=("zlib",),
    )
    assert recipe.content() == RECIPE
    assert key(recipe=recipe.content()) == key()
    one = replace(recipe, patches=(Patch("patches/hello/0001-fix.patch", "a" * 64),))
    assert one.content()["patches"] == [{"file": "patches/hello/0001-fix.patch", "sha256": "a" * 64}]
    variants = [
        key(),
        key(recipe=one.content()),
        key(recipe=replace(recipe, patches=(Patch("patches/hello/0001-fix.patch", "b" * 64),)).content()),
        key(recipe=replace(recipe, patches=(Patch("patches/hello/0002-fix.patch", "a" * 64),)).content()),
        key(recipe=replace(recipe, patches=(*one.patches, Patch("patches/hello/0002-more.patch", "c" * 64))).content()),
    ]
    assert len(set(variants)) == len(variants)
