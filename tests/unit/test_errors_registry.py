"""Every error id the farm uses is registered once, and each family's ids go through the family's class."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import FAMILIES, E, ErrorCodes, FarmError, RecipeError, StoreError, TrustError

ROOT = Path(__file__).resolve().parents[2]
ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
REGISTRY = {name: value for name, value in vars(ErrorCodes).items() if name.isupper() and isinstance(value, str)}


def sources() -> Iterator[tuple[Path, str]]:
    for top in ("farm", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, path.read_text()


def is_id_literal(value: object) -> bool:
    return isinstance(value, str) and value.startswith("E-") and len(value) > 2 and set(value) <= ID_CHARS


def ids_used(source: str) -> tuple[set[str], set[str]]:
    """(id string literals, ``E.NAME`` attribute names) in ``source``."""
    literals: set[str] = set()
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and is_id_literal(node.value):
            literals.add(node.value)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "E":
            names.add(node.attr)
    return literals, names


def family_ids_through_base(source: str) -> list[str]:
    """``FarmError(E.X, ...)`` where E.X belongs to a family: it must be raised through the family's class."""
    family_ids = set().union(*(f.ids or set() for f in FAMILIES))
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "FarmError"):
            continue
        if not node.args:
            continue
        first = node.args[0]
        value: object = None
        if isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == "E":
            value = REGISTRY.get(first.attr)
        elif isinstance(first, ast.Constant):
            value = first.value
        if value in family_ids:
            bad.append(f"line {node.lineno}: FarmError({value!r})")
    return bad


def test_every_id_used_in_the_tree_is_registered() -> None:
    registered = set(REGISTRY.values())
    problems = []
    for path, source in sources():
        literals, names = ids_used(source)
        rel = path.relative_to(ROOT)
        problems += [f"{rel}: literal {lit!r} is not in farm.errors.ErrorCodes" for lit in literals - registered]
        problems += [f"{rel}: E.{n} is not in farm.errors.ErrorCodes" for n in names - set(REGISTRY)]
    assert not problems, "\n".join(sorted(problems))


def test_ids_are_written_as_E_names_not_literals() -> None:
    """A literal id outside the registry can drift from it; the registry is the one spelling."""
    offenders = []
    for path, source in sources():
        if path.name == "errors.py" and path.parent.name == "farm":
            continue
        literals, _ = ids_used(source)
        offenders += [f"{path.relative_to(ROOT)}: {lit}" for lit in sorted(literals)]
    assert not offenders, "use E.NAME instead of:\n" + "\n".join(offenders)


def test_the_scan_finds_an_unregistered_literal_and_attribute() -> None:
    literals, names = ids_used('raise FarmError("E-NOT-A-REAL-ID", "x")\nE.NOT_REAL\nx = "E-LEASE-STALE"')
    assert literals == {"E-NOT-A-REAL-ID", "E-LEASE-STALE"}
    assert names == {"NOT_REAL"}
    assert "E-NOT-A-REAL-ID" not in REGISTRY.values()
    assert "NOT_REAL" not in REGISTRY


def test_registry_ids_are_unique_and_well_formed() -> None:
    values = list(REGISTRY.values())
    duplicates = sorted({v for v in values if values.count(v) > 1})
    assert not duplicates
    assert all(is_id_literal(v) for v in values)
    assert {E.LEASE_STALE, E.LEASE_EXPIRED} <= set(values)


def test_families_are_disjoint_registered_subsets() -> None:
    registered = set(REGISTRY.values())
    seen: set[str] = set()
    for family in FAMILIES:
        assert family.ids, family
        assert family.ids <= registered, family.ids - registered
        assert not (family.ids & seen)
        seen |= family.ids
    assert FarmError.ids is None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_refuses_an_id_outside_it(family: type[FarmError]) -> None:
    inside = sorted(family.ids or ())[0]
    assert family(inside, "m").code == inside
    with pytest.raises(ValueError, match=family.__name__):
        family(E.WORKER, "m")


def test_of_picks_the_family_class() -> None:
    assert type(FarmError.of(E.STORE_MISSING, "m")) is StoreError
    assert type(FarmError.of(E.RECIPE_CYCLE, "m")) is RecipeError
    assert type(FarmError.of(E.KEY_REVOKED, "m", hint="h", file="f", field="x")) is TrustError
    assert type(FarmError.of(E.WORKER, "m")) is FarmError
    err = FarmError.of(E.STORE_CORRUPT, "m", hint="h", file="f", field="x")
    assert (err.code, err.message, err.hint, err.file, err.field) == (E.STORE_CORRUPT, "m", "h", "f", "x")


def test_family_ids_are_raised_through_their_class() -> None:
    offenders = []
    for path, source in sources():
        offenders += [f"{path.relative_to(ROOT)} {b}" for b in family_ids_through_base(source)]
    assert not offenders, "\n".join(offenders)


def test_the_family_scan_catches_a_store_id_raised_as_farm_error() -> None:
    assert family_ids_through_base("raise FarmError(E.STORE_MISSING, 'x')\nraise FarmError(E.WORKER, 'y')") == [
        "line 1: FarmError('E-STORE-MISSING')"
    ]
