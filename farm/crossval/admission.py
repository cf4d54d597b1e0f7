"""K-of-N admission: admit a farm artifact into an image only when at least K trusted organizations (this one
included) attested the same sha256 for the same inputs (source commit, recipe digest, environment digest, arch).

Used by ``mangos-farm image build --require-agreement K --trust peers.toml``. This organization's vote comes from
its own attestation log (synced from its store first); each peer's from its published log, verified with its key
and checked against what it served before (``farm.crossval.compare.fetch_peer``).

``mangos-farm admission check image.lock`` counts the same votes for the farm packages an image lock names (by
recipe, source commit and digest), from published logs and public keys alone (:func:`check_lock`): on a machine
without the builder's private key it writes nothing.

The reproducibility gate (``image build --require-reproducible``, :func:`check_reproducible`) admits a farm-built
package only when a rebuild in the varied environment gave the same digest: an equivalence attestation
(:mod:`farm.crossval.attest`) with verdict ``reproducible``, from this organization's rechecks or a trusted peer's
published ones, whose subjects include the package's file and digest. Archive packages are not its concern.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.crossval.attest import FAILED, NOT_REPRODUCIBLE, REPRODUCIBLE, Equivalence
from farm.crossval.compare import OK, PeerLog, check_trust_file, fetch_peer, own_log
from farm.crossval.log import InputsKey, comparable
from farm.crossval.peers import SELF
from farm.crossval.rebuilds import own_equivalences, read_published
from farm.errors import E, FarmError
from farm.settings import Settings
from farm.trust.keys import trusted_keys


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


def _check_require(require: int) -> None:
    if require < 1:
        raise FarmError(
            E.ADMISSION_REFUSED,
            f"--require-agreement must be at least 1, got {require}",
            field="--require-agreement",
            hint="1 admits what this organization built itself; 2 needs one peer to agree",
        )


def check_agreement(subjects: Sequence[Subject], *, require: int, trust: Path, settings: Settings) -> Report:
    """Count the organizations agreeing on each subject; raise E-ADMISSION-REFUSED if any has fewer than K."""
    _check_require(require)
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


# -- an image lock's farm packages, from published logs alone ----------------------------------------------------
ADMITTED, REFUSED, MISSING = "admitted", "refused", "missing"


@dataclass(frozen=True)
class Locked:
    """A farm-built package as an image lock names it (nothing in the lock is trusted: votes come from logs)."""

    name: str
    version: str
    arch: str
    sha256: str
    recipe: str
    commit: str


def _lock_vote(log: PeerLog, p: Locked) -> str | None:
    """The digest ``log`` attests for the package: ``p.sha256`` when any build of its recipe at its commit (on its
    architecture) gave it, else the digest of that build's .deb of the package (or of its only output; '' when it has
    no such file), else None (no build of it at all)."""
    builds = [
        e
        for e in log.entries.values()
        if e.recipe == p.recipe and e.key.commit == p.commit and p.arch in ("all", e.key.arch)
    ]
    if not builds:
        return None
    if any(p.sha256 in comparable(e.outputs).values() for e in builds):
        return p.sha256
    debs = sorted(
        (n, d) for e in builds for n, d in e.outputs.items() if n.startswith(f"{p.name}_") and n.endswith(".deb")
    )
    if debs:
        return debs[0][1]
    only = {d for e in builds for d in comparable(e.outputs).values()}
    return only.pop() if len(only) == 1 else ""


def check_lock(
    packages: Sequence[Locked], *, require: int, trust: Path, settings: Settings, read_only: bool
) -> dict[str, Any]:
    """Per locked farm package: which organizations attest its digest, which attest another, which nothing; its
    status (``admitted`` with K agreeing, else ``refused`` when one disagrees, else ``missing``) and the exit code
    (0 all admitted, 1 one refused, 2 one missing). ``read_only``: this organization's log as last synced (counted
    only when there is one), peers' heads not remembered: nothing is written."""
    _check_require(require)
    peers = check_trust_file(trust)
    mine = own_log(settings, read_only=read_only)
    logs = ([mine] if mine.size or not read_only else []) + [
        fetch_peer(settings, p, remember=not read_only) for p in peers
    ]
    if require > len(logs):
        raise FarmError(
            E.ADMISSION_REFUSED,
            f"--require-agreement {require} cannot be met: {len(logs)} organization(s) have logs to count",
            file=trust,
            hint="add peers to the trust file or lower --require-agreement",
        )
    rows = []
    for p in packages:
        votes = {log.name: _lock_vote(log, p) if log.status == OK else None for log in logs}
        agree = [o for o, d in votes.items() if d == p.sha256]
        disagree = [
            {"organization": o, "sha256": d or "(no such package)"}
            for o, d in votes.items()
            if d not in (None, p.sha256)
        ]
        status = ADMITTED if len(agree) >= require else REFUSED if disagree else MISSING
        row: dict[str, Any] = {"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256}
        row |= {"recipe": p.recipe, "commit": p.commit, "status": status, "agree": agree, "disagree": disagree}
        rows.append(row | {"missing": [o for o, d in votes.items() if d is None]})
    statuses = {r["status"] for r in rows}
    return {
        "require": require,
        "organizations": [log.name for log in logs],
        "unusable": {log.name: log.error.message if log.error else log.status for log in logs if log.status != OK},
        "packages": rows,
        "admitted": statuses <= {ADMITTED},
        "read_only": read_only,
        "exit": 1 if REFUSED in statuses else 2 if MISSING in statuses else 0,
    }


# -- the reproducibility gate -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Built:
    """A farm-built package the gate judges: its recipe, file name, digest and build key."""

    recipe: str
    artifact: str
    sha256: str
    build_key: str


@dataclass(frozen=True)
class Reproduced:
    package: Built
    agreed: tuple[str, ...]  # organizations whose varied rebuild gave this very digest
    reasons: tuple[str, ...]  # why each other attestation about it does not count

    def to_json(self) -> dict[str, Any]:
        p = self.package
        return {"recipe": p.recipe, "artifact": p.artifact, "sha256": p.sha256, "build_key": p.build_key} | {
            "agreed": list(self.agreed),
            "reasons": list(self.reasons),
        }


def _why_not(org: str, eq: Equivalence, p: Built) -> str:
    if eq.verdict == FAILED:
        return f"{org}'s varied rebuild failed to build"
    if eq.verdict == NOT_REPRODUCIBLE:
        differing = ", ".join(eq.predicate.get("differing", [])) or "outputs"
        causes = ", ".join(eq.predicate.get("causes", [])) or "unknown"
        return f"{org}'s varied rebuild differs ({differing}; likely cause: {causes})"
    if not eq.varied:
        return f"{org} rebuilt it only in the normal environment, not the varied one"
    return f"{org}'s varied rebuild reproduced another digest ({eq.subjects().get(p.artifact, '-')[:16]})"


def judge_reproducible(packages: Sequence[Built], found: Mapping[str, Sequence[Equivalence]]) -> list[Reproduced]:
    """Pure: per package, the organizations whose verified varied rebuild agreed with it, and why others do not."""
    verdicts = []
    for p in packages:
        agreed: list[str] = []
        reasons: list[str] = []
        for org, attestations in found.items():
            about = [eq for eq in attestations if eq.build_key == p.build_key or p.artifact in eq.subjects()]
            if any(
                eq.verdict == REPRODUCIBLE and eq.varied and eq.subjects().get(p.artifact) == p.sha256 for eq in about
            ):
                agreed.append(org)
            else:
                reasons += [_why_not(org, eq, p) for eq in about]
        if not agreed and not reasons:
            reasons.append(f"no varied rebuild attests it (run 'mangos-farm recheck --vary {p.recipe}')")
        verdicts.append(Reproduced(p, tuple(agreed), tuple(dict.fromkeys(reasons))))
    return verdicts


def check_reproducible(packages: Sequence[Built], *, trust: Path | None, settings: Settings) -> list[Reproduced]:
    """Judge every package against this organization's rechecks and the trusted peers' published rebuild
    attestations; raise E-ADMISSION-REFUSED naming each package no varied rebuild agreed with, and why."""
    found: dict[str, Sequence[Equivalence]] = {
        SELF: own_equivalences(settings, trusted_keys(settings.keys_dir, settings.trusted_keys_dir))
    }
    unusable: dict[str, str] = {}
    for peer in check_trust_file(trust) if trust else []:
        try:
            found[peer.name] = read_published(peer.log, [peer.key], f"{peer.name} ({peer.log})")
        except FarmError as exc:
            unusable[peer.name] = exc.message
    verdicts = judge_reproducible(packages, found)
    refused = [v for v in verdicts if not v.agreed]
    if refused:
        lines = [
            f"{v.package.recipe}/{v.package.artifact} {v.package.sha256[:16]}: {'; '.join(v.reasons)}" for v in refused
        ]
        bad = "".join(f"; peer {p}'s rebuild attestations unusable: {why}" for p, why in sorted(unusable.items()))
        raise FarmError(
            E.ADMISSION_REFUSED,
            f"{len(refused)} farm package(s) not shown reproducible by a varied rebuild: " + " | ".join(lines) + bad,
            hint="recheck them ('mangos-farm recheck --vary RECIPE'), fix what differs, or build without "
            "--require-reproducible",
        )
    return verdicts
