"""K-of-N admission: admit a farm artifact into an image only when at least K trusted organizations (this one
included) attested the same sha256 for the same inputs (source commit, recipe digest, environment digest, arch).

Used by ``mangos-farm image build --require-agreement K --trust peers.toml``. This organization's vote comes from
its own attestation log (synced from its store first); each peer's from its published log, verified with its key
and checked against what it served before (``farm.crossval.compare.fetch_peer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.crossval.compare import OK, PeerLog, check_trust_file, fetch_peer, own_log
from farm.crossval.log import InputsKey
from farm.errors import E, FarmError
from farm.settings import Settings


@dataclass(frozen=True)
class Subject:
    recipe: str
    artifact: str
    sha256: str
    statement: dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    subject: Subject
    key: InputsKey
    agree: tuple[str, ...]  # organizations that attested this digest
    disagree: tuple[tuple[str, str], ...]  # (organization, the digest it attested instead)
    missing: tuple[str, ...]  # organizations with no attestation (or whose log was unusable)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.subject.recipe,
            "artifact": self.subject.artifact,
            "sha256": self.subject.sha256,
            "key": self.key.to_json(),
            "agree": list(self.agree),
            "disagree": [{"organization": o, "sha256": d} for o, d in self.disagree],
            "missing": list(self.missing),
        }


@dataclass(frozen=True)
class Report:
    require: int
    verdicts: tuple[Verdict, ...]
    organizations: tuple[str, ...]
    unusable: dict[str, str]  # peer -> why its log was not used

    @property
    def admitted(self) -> bool:
        return all(len(v.agree) >= self.require for v in self.verdicts)

    def refused(self) -> list[Verdict]:
        return [v for v in self.verdicts if len(v.agree) < self.require]

    def to_json(self) -> dict[str, Any]:
        return {
            "require": self.require,
            "admitted": self.admitted,
            "organizations": list(self.organizations),
            "unusable": dict(self.unusable),
            "verdicts": [v.to_json() for v in self.verdicts],
        }


def _vote(log: PeerLog, key: InputsKey, subject: Subject) -> str | None:
    """The digest this organization attested for the artifact under this key (None: it attested nothing)."""
    entry = log.entries.get(key)
    if entry is None:
        return None
    return entry.outputs.get(subject.artifact, "")


def evaluate(subjects: Sequence[Subject], logs: Sequence[PeerLog], *, require: int, arch: str) -> Report:
    """Pure counting over already verified logs (unit-tested on its own)."""
    verdicts = []
    for s in subjects:
        key = InputsKey.from_statement(s.statement, arch)
        agree: list[str] = []
        disagree: list[tuple[str, str]] = []
        missing: list[str] = []
        for log in logs:
            digest = _vote(log, key, s) if log.status == OK else None
            if digest is None:
                missing.append(log.name)
            elif digest == s.sha256:
                agree.append(log.name)
            else:
                disagree.append((log.name, digest or "(no such artifact)"))
        verdicts.append(Verdict(s, key, tuple(agree), tuple(disagree), tuple(missing)))
    unusable = {log.name: log.error.message if log.error else log.status for log in logs if log.status != OK}
    return Report(require, tuple(verdicts), tuple(log.name for log in logs), unusable)


def refusal(report: Report) -> FarmError:
    lines = []
    for v in report.refused():
        parts = [f"{len(v.agree)} of {report.require} required agree ({', '.join(v.agree) or 'none'})"]
        if v.disagree:
            parts.append("disagreeing: " + ", ".join(f"{o} attested {d[:16]}" for o, d in v.disagree))
        if v.missing:
            parts.append("no attestation: " + ", ".join(v.missing))
        lines.append(f"{v.subject.recipe}/{v.subject.artifact} {v.subject.sha256[:16]}: " + "; ".join(parts))
    unusable = "".join(f"; peer {p} unusable: {why}" for p, why in sorted(report.unusable.items()))
    return FarmError(
        E.ADMISSION_REFUSED,
        f"{len(lines)} artifact(s) lack agreement of {report.require} organizations: " + " | ".join(lines) + unusable,
        hint="run 'mangos-farm compare --trust PEERS' to see every disagreement; rebuild or investigate before "
        "admitting, or lower --require-agreement",
    )


def check_agreement(subjects: Sequence[Subject], *, require: int, trust: Path, settings: Settings) -> Report:
    """Count the organizations agreeing on each subject; raise E-ADMISSION-REFUSED if any has fewer than K."""
    if require < 1:
        raise FarmError(
            E.ADMISSION_REFUSED,
            f"--require-agreement must be at least 1, got {require}",
            field="--require-agreement",
            hint="1 admits what this organization built itself; 2 needs one peer to agree",
        )
    peers = check_trust_file(trust)
    if require > len(peers) + 1:
        raise FarmError(
            E.ADMISSION_REFUSED,
            f"--require-agreement {require} cannot be met: {trust} names {len(peers)} peer(s), plus this organization",
            file=trust,
            hint="add peers to the trust file or lower --require-agreement",
        )
    logs = [own_log(settings), *(fetch_peer(settings, p) for p in peers)]
    report = evaluate(subjects, logs, require=require, arch=settings.build_arch)
    if not report.admitted:
        raise refusal(report)
    return report
