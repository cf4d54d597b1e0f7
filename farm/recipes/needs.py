"""What a build needs of the worker that runs it (capabilities), and the classes of work they make.

A capability is something a worker may lack and a build may need: ``debian`` (a namespace overlay mount: every
Debian build needs it, implicitly) and ``kvm`` (QEMU with ``-accel kvm``). A recipe may name more in ``needs``.
What a build needs decides where it may run, never what it makes: ``needs`` is not part of a recipe's content
(:meth:`farm.recipes.model.Recipe.content`), so it never enters a build key, and adding or dropping it rebuilds
nothing.

A build's *class* names its set of needs: ``default`` (none), else the capabilities sorted and joined by ``+``
(``debian``, ``kvm``, ``debian+kvm``). There is one class per subset of :data:`CAPABILITIES`; a worker serves every
class whose needs it has (:func:`served`).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError, RecipeError

DEBIAN = "debian"
KVM = "kvm"
CAPABILITIES = (DEBIAN, KVM)
DEFAULT_CLASS = "default"


def class_of(needs: Iterable[str]) -> str:
    """The class of a set of needs (``default`` for none). Pure."""
    found = sorted(set(needs))
    return "+".join(found) if found else DEFAULT_CLASS


def class_needs(cls: str) -> frozenset[str]:
    """The needs a class stands for (the inverse of :func:`class_of`)."""
    return frozenset() if cls == DEFAULT_CLASS else frozenset(cls.split("+"))


def classes() -> list[str]:
    """Every class, ``default`` first, then by number of needs."""
    return [class_of(c) for n in range(len(CAPABILITIES) + 1) for c in combinations(sorted(CAPABILITIES), n)]


def served(capabilities: Iterable[str]) -> list[str]:
    """The classes a worker with ``capabilities`` can run (``default`` always), in :func:`classes` order."""
    have = set(capabilities)
    return [c for c in classes() if class_needs(c) <= have]


def required(kind: str, declared: Iterable[str]) -> tuple[str, ...]:
    """Everything a build needs: what its recipe declares, and ``debian`` for a Debian build. Sorted."""
    return tuple(sorted(set(declared) | ({DEBIAN} if kind == "debian" else set())))


def parse_needs(value: Any, path: Path, errors: list[FarmError]) -> tuple[str, ...]:
    """A recipe's ``needs``: known capabilities, each once (problems appended to ``errors``)."""
    hint = f'capabilities a worker can have: {", ".join(CAPABILITIES)}; e.g. needs = ["kvm"]'
    if not isinstance(value, list):
        return ()
    unknown = [v for v in value if v not in CAPABILITIES]
    if unknown:
        errors.append(RecipeError(E.RECIPE_VALUE, f"unknown capability {unknown[0]!r}", hint=hint, file=path,
                                  field="needs"))  # fmt: skip
        return ()
    if len(set(value)) != len(value):
        errors.append(RecipeError(E.RECIPE_VALUE, "names a capability twice", hint="list each once", file=path,
                                  field="needs"))  # fmt: skip
    return tuple(sorted(set(value)))
