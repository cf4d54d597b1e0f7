"""The CLI's command registry: every command module's commands are registered once, in ``main.COMMANDS``; no module
reaches into another's private names; building the parser imports none of the machinery the handlers use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from farm.cli import main

CLI = Path(main.__file__).parent


def test_every_command_of_every_module_is_registered_once() -> None:
    registered = [name for name, _ in main.COMMANDS]
    assert len(registered) == len(set(registered))
    for name, module_name in main.COMMANDS:
        module = main.command_module(module_name)
        assert name in module.COMMANDS, f"{module.__name__} does not define {name}"
    modules = {main.command_module(module) for _, module in main.COMMANDS}
    for module in modules:
        assert set(module.COMMANDS) <= set(registered), f"{module.__name__} has commands main does not register"


def test_no_module_imports_a_private_name_from_another() -> None:
    for path in sorted([*CLI.glob("*.py"), CLI.parents[1] / "workers" / "fleet.py"]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("farm", "workers")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_building_the_parser_loads_no_handler_machinery() -> None:
    code = "import sys\nfrom farm.cli.main import build_parser\nbuild_parser()\nprint(' '.join(sorted(sys.modules)))\n"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    )
    heavy = {"celery", "kombu", "git", "cryptography", "farm.build.execute", "farm.coordinator", "workers"}
    assert not loaded & heavy


def test_a_command_parses_alike_with_only_its_own_module() -> None:
    argv = ["--home", "h", "-v", "rebuild", "recipes", "--lane", "security"]
    assert main.chosen_command(argv) == "rebuild"
    assert vars(main.build_parser("rebuild").parse_args(argv)) == vars(main.build_parser().parse_args(argv))
    for whole in (["--help"], [], ["nosuch"], ["--home=h", "--bogus", "rebuild"], ["--home"]):
        assert main.chosen_command(whole) is None, whole
    assert main.chosen_command(["--home=h", "status"]) == "status"


def test_starting_one_command_imports_only_its_module() -> None:
    code = (
        "import sys\nfrom farm.cli.main import build_parser, chosen_command\n"
        "build_parser(chosen_command(['rebuild', 'recipes']))\nprint(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    )
    assert "farm.cli.runs" in loaded
    assert not loaded & {"farm.cli.security", "farm.cli.image", "farm.cli.crossval", "prometheus_client"}
