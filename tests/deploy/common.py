"""Paths and loaders shared by the deployment tests."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from farm.cli.main import build_parser
from farm.settings import describe

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mangos-farm.json"
KUBERNETES = DEPLOY / "kubernetes"
SECCOMP_PROFILE = DEPLOY / "seccomp" / "worker.json"
OPERATIONS = ROOT / "docs" / "operations.md"

WORKER_UID = 10001  # the image's unprivileged user (Containerfile), as compose and Kubernetes run it


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def setting_variables() -> set[str]:
    """Every MANGOS_FARM_* variable the farm reads (farm.settings)."""
    return {row["env"] for row in describe()}


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """``mangos-farm ARGV`` as the CLI would parse it; an AssertionError naming the command line if it cannot."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"'mangos-farm {' '.join(argv)}' is not a valid command line") from exc


def markdown_anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
