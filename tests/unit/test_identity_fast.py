"""Canonical JSON takes a cheap walk for plain values (exact dict/list/str/int/bool/None) and the checking walk for
anything else: both accept and refuse the same values, and the bytes do not depend on which walk ran."""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from typing import Any

import pytest

from farm.identity import NotCanonical, canonical_json

pytestmark = pytest.mark.unit


class Level(enum.IntEnum):
    HIGH = 2


class Name(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        {"b": [1, True, None, ("x", "y")], "a": {"é": "ü"}},
        OrderedDict([("z", 1), ("a", 2)]),
        {"level": Level.HIGH},
        {Name("key"): Name("value")},
        [],
        "",
    ],
)
def test_values_are_accepted_as_before_with_the_same_bytes(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": [1, {"b": 1.5}]}, "$.a[1].b: floats"),
        ([[[0.0]]], "$[0][0][0]: floats"),
        ({"a": {1: "x"}}, "$.a: keys must be strings"),
        ({"a": {b"x"}}, "$.a: set is not a JSON value"),
        ({"a": b"bytes"}, "$.a: bytes is not a JSON value"),
    ],
)
def test_non_canonical_values_are_refused_naming_where(value: Any, where: str) -> None:
    with pytest.raises(NotCanonical, match=where.replace("[", r"\[").replace("]", r"\]").replace("$", r"\$")):
        canonical_json(value)
