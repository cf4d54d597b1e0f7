"""The tool table is complete and everything it names is installed by ``make setup``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from farm import run as farm_run
from farm.errors import E, FarmError
from farm.tools import TOOLS, UnknownTool, package_for

ROOT = Path(__file__).resolve().parents[2]


def apt_packages(makefile: str) -> set[str]:
    """The words of the Makefile's ``APT_PACKAGES :=`` assignment (backslash continuations joined)."""
    joined = makefile.replace("\\\n", " ")
    match = re.search(r"^APT_PACKAGES\s*:?=(.*)$", joined, re.MULTILINE)
    assert match, "no APT_PACKAGES in the Makefile"
    return set(match.group(1).split())


def require_tool_calls(source: str) -> list[tuple[int, list[ast.expr]]]:
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "require_tool":
                calls.append((node.lineno, [*node.args, *(k.value for k in node.keywords)]))
    return calls


def test_every_package_in_the_table_is_in_the_makefile() -> None:
    packages = apt_packages((ROOT / "Makefile").read_text())
    missing = sorted({pkg for pkg in TOOLS.values() if pkg not in packages})
    assert not missing, f"add to APT_PACKAGES in the Makefile: {missing}"


def test_every_apt_get_install_hint_names_a_makefile_package() -> None:
    packages = apt_packages((ROOT / "Makefile").read_text())
    problems = []
    for path in sorted((ROOT / "farm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in re.finditer(r"apt-get install ([a-z0-9][a-z0-9.+-]+)", node.value):
                    if match.group(1) not in packages:
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {match.group(1)}")
    assert not problems


def test_every_require_tool_call_names_one_tool_of_the_table() -> None:
    problems = []
    for top in ("farm", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, args in require_tool_calls(path.read_text()):
                where = f"{path.relative_to(ROOT)}:{line}"
                if path.name == "run.py" and path.parent.name == "farm":
                    continue
                if len(args) != 1 or not isinstance(args[0], ast.Constant):
                    problems.append(f"{where}: require_tool takes one literal tool name")
                elif args[0].value not in TOOLS:
                    problems.append(f"{where}: {args[0].value!r} is not in farm.tools.TOOLS")
    assert not problems, "\n".join(problems)


def test_the_scans_can_fail() -> None:
    assert apt_packages("X := 1\nAPT_PACKAGES := a b \\\n\tc\n\nY := z\n") == {"a", "b", "c"}
    [(_, args)] = require_tool_calls('require_tool("nosuchtool", "pkg")')
    assert len(args) == 2
    [(_, args)] = require_tool_calls('farm.run.require_tool("nosuchtool")')
    assert isinstance(args[0], ast.Constant) and args[0].value not in TOOLS


def test_an_unknown_tool_is_a_programming_error() -> None:
    with pytest.raises(UnknownTool, match="nosuchtool"):
        package_for("nosuchtool")
    with pytest.raises(UnknownTool):
        farm_run.require_tool("sh")  # installed, but not in the table


def test_a_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("farm.run.shutil.which", lambda name: None)
    with pytest.raises(FarmError) as info:
        farm_run.require_tool("mcopy")
    assert info.value.code == E.TOOL_MISSING
    assert "apt-get install mtools" in info.value.hint


def test_a_present_tool_is_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("farm.run.shutil.which", lambda name: f"/usr/bin/{name}")
    assert farm_run.require_tool("git") == "/usr/bin/git"
