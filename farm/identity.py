"""Canonical JSON and build keys: the one place that decides what a build's inputs are.

A build key is the sha256 of the canonical JSON of everything that can change a build's outputs: the recipe
content, the source commit and its tree, the build environment's digest and the output digests of the
build-dependencies. Canonical means sorted keys, no insignificant whitespace, UTF-8 and no floats (whose text
form differs between languages), so any implementation on any machine computes the same key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec

KEY_SCHEMA = "https://mangos.dev/farm/build-key/v1"

P = ParamSpec("P")


class NotCanonical(TypeError):
    pass


def _check(value: Any, path: str = "$") -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        raise NotCanonical(f"{path}: floats are not allowed in canonical JSON")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotCanonical(f"{path}: keys must be strings")
            _check(v, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    raise NotCanonical(f"{path}: {type(value).__name__} is not a JSON value")


def _plain(value: Any) -> bool:
    """Whether ``value`` is made only of dicts with str keys, lists, tuples, str, int, bool and None, each of
    exactly that type: such a value is canonical, and this walk is the cheap one. Anything else (a float, another
    Mapping, a subclass) returns False, and :func:`_check` decides, naming the offending path."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or t is int or t is bool or v is None:
            continue
        if t is dict:
            for k in v:
                if type(k) is not str:
                    return False
            stack.extend(v.values())
        elif t is list or t is tuple:
            stack.extend(v)
        else:
            return False
    return True


def json_encoder(
    *, sort_keys: bool = False, separators: tuple[str, str] = (", ", ": "), ensure_ascii: bool = True
) -> Callable[[Any], str]:
    """``json.dumps`` with these options, as one function made once: the same text for every value ``json.dumps``
    encodes, without making an encoder per call (a submitted run encodes thousands of small documents).

    Circular references are not looked for (``check_circular=False``): the values encoded are trees of plain data,
    and one that is not fails with RecursionError instead of ValueError."""
    from json import encoder as std

    item, key = separators
    make: Any = getattr(std, "c_make_encoder", None)  # what json.dumps uses (None without the C accelerator)
    if make is None:  # pragma: no cover - Python without its C accelerator
        python = json.JSONEncoder(sort_keys=sort_keys, separators=separators, ensure_ascii=ensure_ascii)
        return python.encode
    strings = std.encode_basestring_ascii if ensure_ascii else std.encode_basestring
    fast = make(None, json.JSONEncoder().default, strings, None, key, item, sort_keys, False, True)

    def encode(value: Any) -> str:
        return "".join(fast(value, 0))

    return encode


_CANONICAL = json_encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    if not _plain(value):
        _check(value)
    return _CANONICAL(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(value: Any) -> str:
    return sha256_hex(canonical_json(value))


def build_key_inputs(
    recipe: Mapping[str, Any],
    commit: str,
    tree: str,
    environment: str,
    dependencies: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:
    """The exact document hashed into a build key; kept in the build record for audit."""
    return {
        "schema": KEY_SCHEMA,
        "recipe": dict(recipe),
        "source": {"commit": commit, "tree": tree},
        "environment": environment,
        "dependencies": {name: dict(outputs) for name, outputs in dependencies.items()},
    }


def _hashed(document: Callable[P, Any]) -> Callable[P, str]:
    """A function with ``document``'s parameters that returns the digest of the document it makes."""

    def digest(*args: P.args, **kwargs: P.kwargs) -> str:
        return digest_of(document(*args, **kwargs))

    return digest


build_key = _hashed(build_key_inputs)
"""The build key: the digest of :func:`build_key_inputs` for the same arguments."""
