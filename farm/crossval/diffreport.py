"""Explaining a difference between two builds of an artifact: diffoscope's report and the likely causes.

diffoscope writes a text and an HTML report, each bounded by ``max_report_size`` (the text report is cut there
even when diffoscope overshoots) and by a timeout; both are stored in the store and kept next to the result.
:func:`classify` reads the text report and names the likely causes, most specific first, from :data:`CAUSES`: the
causes of :data:`farm.build.variation.TABLE`, each recognised by what its varied value leaves in the output (the
varied build path, host name, user name or time zone, a day or month name of the varied locale, a 2.6 kernel
release, file modes differing in a write bit), plus timestamps, build ids and reordered lines.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
from pathlib import Path

from farm.build.variation import Variation
from farm.run import require_tool, run
from farm.store import Store

# Most specific first; every cause farm.build.variation's table names is one of these.
CAUSES = (
    "timestamps",
    "build-id",
    "paths",
    "file order",
    "locale",
    "time zone",
    "umask",
    "user",
    "hostname",
    "kernel",
    "cpus",
    "other",
)
DEFAULT_MAX_REPORT = 2 * 1024 * 1024
DEFAULT_DIFF_TIMEOUT = 300.0

_BOX = re.compile(r"^(?:[│├└┄─╎]+ ?)*")  # diffoscope's tree prefix; what follows is a unified diff line
_TOKEN = re.compile(r"0x[0-9a-fA-F]+|\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d(?:\.\d+)?|[+-]\d{4}\b|\w+")
_NAME = re.compile(r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec|Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*")
_CLOCKISH = re.compile(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d(?:\.\d+)?|[+-]\d{4}")
# Day and month names (abbreviated and full) of the locales a recheck varies to (de_CH, tr_TR) that English
# does not share: one appearing where the normal build wrote something else is a locale's date format.
_LOCALE_WORDS = frozenset(
    " ".join(
        (
            "Mo Di Mi Do Fr So Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",  # de_CH
            "Mär Mai Okt Dez Januar Februar März Juni Juli Oktober Dezember",
            "Pzt Sal Çar Per Cum Cmt Paz Pazartesi Salı Çarşamba Perşembe Cuma Cumartesi Pazar",  # noqa: RUF001 - tr_TR
            "Oca Şub Nis Haz Tem Ağu Eyl Eki Kas Ara Ocak Şubat Mart Nisan Mayıs Haziran Temmuz Ağustos Eylül",  # noqa: RUF001
            "Ekim Kasım Aralık",  # noqa: RUF001
        )
    ).split()
)
_MODE = re.compile(r"(?<!\S)[-dlcbps][-r][-w][-xsS][-r][-w][-xsS][-r][-w][-xtT](?!\S)")
_KERNEL_26 = re.compile(r"\b2\.6\.\d+")


def _timey(token: str) -> bool:
    """A token that reads as a date, a time, a year (decimal or hex, as compilers embed it) or an epoch."""
    if _CLOCKISH.fullmatch(token) or _NAME.fullmatch(token):
        return True
    try:
        value = int(token, 16) if token.startswith("0x") else int(token)
    except ValueError:
        return False
    return 1970 <= value <= 2100 or 10**9 <= value < 5 * 10**9


def _time_change(minus: str, plus: str) -> bool:
    """Two versions of a line that differ only in date/time tokens (and the day/month numbers beside them)."""
    a, b = _TOKEN.findall(minus), _TOKEN.findall(plus)
    if len(a) != len(b):
        return False
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    small = re.compile(r"\d{1,2}")
    return any(_timey(x) and _timey(y) for x, y in changed) and all(
        (_timey(x) and _timey(y)) or (small.fullmatch(x) and small.fullmatch(y)) for x, y in changed
    )


def diffoscope_argv(a: Path, b: Path, text: Path, html: Path, max_report_size: int) -> list[str]:
    """The diffoscope command line (pure, unit-tested): text and HTML reports, both size-bounded."""
    return [
        "diffoscope",
        "--text",
        str(text),
        "--html",
        str(html),
        "--max-report-size",
        str(max_report_size),
        "--max-text-report-size",
        str(max_report_size),
        "--exclude-directory-metadata",
        "yes",  # the two temporary copies' own mtimes are not the build's difference
        str(a),
        str(b),
    ]


def _blocks(report: str) -> list[tuple[list[str], list[str]]]:
    """The changed lines of a diffoscope text report, as (removed, added) per contiguous change."""
    blocks: list[tuple[list[str], list[str]]] = []
    current: tuple[list[str], list[str]] | None = None
    for raw in report.splitlines():
        line = _BOX.sub("", raw)
        if line.startswith(("---", "+++")) or not line.startswith(("-", "+")):
            current = None
            continue
        if current is None:
            current = ([], [])
            blocks.append(current)
        current[0 if line.startswith("-") else 1].append(line[1:])
    return blocks


def _changed_lines(report: str) -> tuple[list[str], list[str]]:
    blocks = _blocks(report)
    return [m for b in blocks for m in b[0]], [p for b in blocks for p in b[1]]


_HEADER = re.compile(r"^[│ ]*[├└]── ")  # a new file or member in diffoscope's tree


def _sections(report: str) -> list[str]:
    """The report cut at each file or member it compares (a .deb's members each get their own)."""
    sections: list[list[str]] = [[]]
    for line in report.splitlines():
        if _HEADER.match(line):
            sections.append([])
        sections[-1].append(line)
    return ["\n".join(lines) for lines in sections if lines]


def _reordered(section: str) -> bool:
    """The same lines (or members) in another order: what a diff removes it adds back elsewhere."""
    minus, plus = _changed_lines(section)
    return bool(minus) and sorted(minus) == sorted(plus)


def _localized(minus: str, plus: str) -> bool:
    """The varied line has a day or month name of the varied locale where the normal one has none."""
    before = set(_TOKEN.findall(minus))
    return any(t in _LOCALE_WORDS and t not in before for t in _TOKEN.findall(plus))


def _umask_change(minus: str, plus: str) -> bool:
    """File modes that differ only in the group or other write bit (umask 022 against 002)."""
    a, b = _MODE.findall(minus), _MODE.findall(plus)
    return (
        len(a) == len(b) > 0
        and a != b
        and all(all(i in (5, 8) for i in range(10) if x[i] != y[i]) for x, y in zip(a, b, strict=True))
    )


def classify(report: str, variation: Variation) -> list[str]:
    """Likely causes of a difference, from diffoscope's text report (most specific first; 'other' if none)."""
    minus, plus = _changed_lines(report)
    changed = minus + plus
    causes: list[str] = []
    pairs = [pair for removed, added in _blocks(report) for pair in zip(removed, added, strict=False)]

    def found(*needles: str) -> bool:
        return any(n and n in line for n in needles for line in changed)

    if any(_time_change(m, p) for m, p in pairs):
        causes.append("timestamps")
    if re.search(r"build.?id", report, re.IGNORECASE):
        causes.append("build-id")
    parent = posixpath.dirname(variation.build_dir)
    if found(variation.build_dir, variation.build_path, parent if parent != "/build" else ""):
        causes.append("paths")
    if any(_reordered(section) for section in _sections(report)):
        causes.append("file order")
    if found(variation.locale, "LC_") or any(_localized(m, p) for m, p in pairs):
        causes.append("locale")
    if found(variation.tz):
        causes.append("time zone")
    if any(_umask_change(m, p) for m, p in pairs):
        causes.append("umask")
    if variation.user and any(re.search(rf"\b{re.escape(variation.user)}\b", line) for line in plus):
        causes.append("user")
    if found(variation.hostname, variation.domain):
        causes.append("hostname")
    if variation.kernel_26 and any(_KERNEL_26.search(line) for line in plus):
        causes.append("kernel")
    return causes or ["other"]


def diff(
    store: Store, name: str, digests: tuple[str, str], dest: Path, *, max_report_size: int, timeout: float
) -> tuple[str, dict[str, str]]:
    """Run diffoscope on the two versions of an artifact; return its text report and the stored report digests."""
    require_tool("diffoscope")
    with tempfile.TemporaryDirectory(prefix="recheck-") as tmp:
        left, right = Path(tmp) / "published" / name, Path(tmp) / "varied" / name
        store.fetch_blob(digests[0], left)
        store.fetch_blob(digests[1], right)
        text, html = dest / f"{name}.diffoscope.txt", dest / f"{name}.diffoscope.html"
        dest.mkdir(parents=True, exist_ok=True)
        result = run(diffoscope_argv(left, right, text, html, max_report_size), check=False, timeout=timeout)
    note = ""
    if result.timed_out:
        note = f"diffoscope stopped after {timeout:g}s; the report is incomplete"
    elif result.returncode not in (0, 1):
        note = f"diffoscope exited {result.returncode}: {result.stderr.decode(errors='replace')[-500:]}"
    if text.exists() and text.stat().st_size > max_report_size:  # diffoscope's cap is checked between blocks only
        with text.open("r+b") as fh:
            fh.truncate(max_report_size)
            fh.seek(0, 2)
            fh.write(f"\n[report truncated at {max_report_size} bytes by mangos-farm]\n".encode())
    report = text.read_text(errors="replace") if text.exists() else ""
    stored = {"note": note}
    for kind, path in (("text", text), ("html", html)):
        if path.exists():
            stored[kind] = store.put_file(path).digest
    return report, stored
