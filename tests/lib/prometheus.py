"""A real Prometheus server (Debian's ``prometheus``) scraping processes on 127.0.0.1, and the shipped alert rules
rendered for a test's time scale.

Scrapes and rule evaluations run every second; the server is asked through its HTTP API (``/api/v1/query``),
as Grafana, KEDA and an operator ask it.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.lib.tools import free_port, require, stop


def render_rules(source: Path, *, hold: str = "5s", thresholds: Mapping[str, tuple[str, str]] | None = None) -> str:
    """The alert rules of ``source`` with every ``for:`` set to ``hold``; ``thresholds`` maps an alert to an
    (old, new) replacement in its expression (a duration in seconds a test cannot wait for). Every replacement
    must apply: a rule that changed under the test fails it rather than being tested unchanged."""
    rules = yaml.safe_load(source.read_text())
    done: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = hold
            name = rule.get("alert")
            if thresholds and name in thresholds:
                old, new = thresholds[name]
                assert old in rule["expr"], f"{name}: {old!r} not in {rule['expr']!r}"
                rule["expr"] = rule["expr"].replace(old, new)
                done.add(name)
    assert done == set(thresholds or {}), f"no such alerts: {set(thresholds or {}) - done}"
    return str(yaml.safe_dump(rules, sort_keys=False))


class Prometheus:
    """Prometheus on a free port of 127.0.0.1 under ``root``: one job per target (job name -> port of
    127.0.0.1), ``rules`` (text of a rule file) evaluated every second."""

    def __init__(self, root: Path, targets: Mapping[str, int], rules: str | None = None) -> None:
        self.port = free_port()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        if rules is not None:
            (root / "rules.yml").write_text(rules)
            config["rule_files"] = ["rules.yml"]
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = root / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    require("prometheus"),
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (``/api/v1/query``)."""
        data = self._get("/api/v1/query", query=expr)
        assert data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a one-element result (None: empty, or the server not answering yet)."""
        try:
            result = self.query(expr)
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def firing(self, alert: str) -> list[dict[str, str]]:
        """The label sets of ``alert``'s firing instances (the ``ALERTS`` series Prometheus writes)."""
        try:
            found = self.query(f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
        except OSError:
            return []
        return [r["metric"] for r in found]

    def series_names(self) -> set[str]:
        """Every metric name Prometheus has stored (``/api/v1/label/__name__/values``)."""
        data = self._get("/api/v1/label/__name__/values")
        return set(data["data"])

    def log_tail(self, limit: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-limit:]

    def close(self) -> None:
        stop(self.proc, grace=20)
