"""A local Debian archive for tests, served to the real apt through an isolated ``APT_CONFIG``.

``LocalArchive(root)`` holds suites (``bookworm``, ``bookworm-security`` by default), each a
``dists/SUITE/main/{source,binary-amd64}`` tree with Sources and Packages indexes and a Release file (Origin
``Debian``, Suite and Codename the suite's name, so :func:`farm.sources.apt.archive_label` names an index
``Debian bookworm-security``). Source packages are real (``dpkg-source -b``, format ``3.0 (quilt)``, the orig
tarball shared by every revision of one upstream version) and build with nothing beyond build-essential: their
``debian/rules`` runs make and dpkg-deb, no debhelper. Binary packages are real .debs (``dpkg-deb --build``).

apt sees only this archive through the config file :attr:`LocalArchive.config`: its own lists, cache, sources
list, an empty sources.list.d, an empty apt.conf.d and preferences.d (the host's hooks and pins stay out). The dpkg
status is left to the callers (the host's by default; the farm's simulations pass an environment's). Every apt call
the farm makes through :func:`farm.run.run` inherits ``os.environ``, so ``archive.use(monkeypatch)`` (which sets
``APT_CONFIG``) points all of them here; :attr:`LocalArchive.env` is the same for a child of the test's own.

    archive = LocalArchive(tmp_path / "archive")
    archive.add(name="x", version="1.0-1", suite="bookworm")
    archive.add(name="x", version="1.0-1+deb12u1", suite="bookworm-security")
    archive.publish()            # indexes written, apt-get update run with the isolated config
    archive.use(monkeypatch)     # os.environ["APT_CONFIG"] = archive.config
    archive.lists_dir            # where apt keeps this archive's lists (pass as lists_dir=)
    archive.remove_source_files("x", "1.0-1+deb12u1")   # the index still lists it, the pool no longer serves it
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lib.tools import require

SUITES = ("bookworm", "bookworm-security")
ARCH = "amd64"
MAINTAINER = "MANGOS tests <tests@mangos.invalid>"
DATE = "Sat, 01 Jun 2024 00:00:00 +0000"
EPOCH = 1717200000

RULES = """\
#!/usr/bin/make -f
# No debhelper: plain make and dpkg-deb, so build-essential is all a build needs.
BINARIES := {binaries}

build build-arch build-indep:
\t$(MAKE)

clean:
\trm -rf debian/tmp-* debian/files debian/substvars built.txt

binary binary-arch binary-indep: build
\tset -e; for p in $(BINARIES); do \\
\t  rm -rf debian/tmp-$$p; \\
\t  install -d debian/tmp-$$p/DEBIAN debian/tmp-$$p/usr/share/$$p; \\
\t  install -m644 built.txt debian/tmp-$$p/usr/share/$$p/built.txt; \\
\t  dpkg-gencontrol -p$$p -Pdebian/tmp-$$p; \\
\t  dpkg-deb --root-owner-group --build debian/tmp-$$p ..; \\
\tdone

.PHONY: build build-arch build-indep clean binary binary-arch binary-indep
"""


@dataclass(frozen=True)
class Added:
    """One source package put in one suite, with the binaries built for the index."""

    name: str
    version: str
    suite: str
    binaries: tuple[str, ...]
    dsc: Path
    debs: tuple[Path, ...]


def _run(argv: Sequence[str | os.PathLike[str]], cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        [os.fspath(a) for a in argv],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({result.returncode}):\n"
            + result.stdout.decode(errors="replace")[-3000:]
            + result.stderr.decode(errors="replace")[-3000:]
        )
    return result.stdout.decode(errors="replace")


def _upstream(version: str) -> str:
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def _deterministic_tar_gz(src_dir: Path, top: str, dest: Path) -> None:
    """``dest`` (.tar.gz) holding ``src_dir`` as ``top/``: fixed owners, modes and dates, the same bytes every time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in [src_dir, *sorted(src_dir.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=f"{top}/{path.relative_to(src_dir)}".rstrip("/."))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = EPOCH
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    with dest.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())


@dataclass
class LocalArchive:
    """A Debian archive under ``root`` (``root/archive``) and apt's state for it (``root/apt``)."""

    root: Path
    suites: tuple[str, ...] = SUITES
    arch: str = ARCH
    origin: str = "Debian"
    added: list[Added] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.archive_dir = self.root / "archive"
        self.apt_dir = self.root / "apt"
        for d in (
            self.archive_dir / "pool",
            self.lists_dir / "partial",
            self.apt_dir / "cache" / "archives" / "partial",
            self.apt_dir / "etc" / "sources.list.d",
            self.apt_dir / "etc" / "apt.conf.d",
            self.apt_dir / "etc" / "preferences.d",
            self.root / "work",
        ):
            d.mkdir(parents=True, exist_ok=True)
        self._write_config()

    # -- apt's view ---------------------------------------------------------------------------------------------
    @property
    def lists_dir(self) -> Path:
        return self.apt_dir / "lists"

    @property
    def config(self) -> Path:
        return self.apt_dir / "apt.conf"

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with ``APT_CONFIG`` pointing at this archive's config (for a child process)."""
        return os.environ | {"APT_CONFIG": str(self.config), "LC_ALL": "C"}

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point every apt the test (and the farm code it calls) runs at this archive, for the test's duration."""
        monkeypatch.setenv("APT_CONFIG", str(self.config))

    def _write_config(self) -> None:
        etc, cache = self.apt_dir / "etc", self.apt_dir / "cache"
        lines = []
        for suite in self.suites:
            lines.append(f"deb [trusted=yes] file:{self.archive_dir} {suite} main")
            lines.append(f"deb-src [trusted=yes] file:{self.archive_dir} {suite} main")
        (etc / "sources.list").write_text("\n".join(lines) + "\n")
        settings = {
            "Dir::Etc::main": str(etc / "apt.conf.none"),
            "Dir::Etc::parts": str(etc / "apt.conf.d"),
            "Dir::Etc::sourcelist": str(etc / "sources.list"),
            "Dir::Etc::sourceparts": str(etc / "sources.list.d"),
            "Dir::Etc::preferences": str(etc / "preferences.none"),
            "Dir::Etc::preferencesparts": str(etc / "preferences.d"),
            "Dir::State::lists": str(self.lists_dir),
            "Dir::State::extended_states": str(self.apt_dir / "extended_states"),
            "Dir::Cache": str(cache),
            "Dir::Cache::archives": str(cache / "archives"),
            "Dir::Cache::pkgcache": str(cache / "pkgcache.bin"),
            "Dir::Cache::srcpkgcache": str(cache / "srcpkgcache.bin"),
            "APT::Architecture": self.arch,
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Check-Valid-Until": "false",
            "Acquire::Check-Date": "false",
        }
        self.config.write_text("".join(f'{k} "{v}";\n' for k, v in settings.items()))

    # -- content ------------------------------------------------------------------------------------------------
    def pool(self, suite: str, name: str) -> Path:
        return self.archive_dir / "pool" / suite / "main" / name

    def add(
        self,
        *,
        name: str = "x",
        version: str = "1.0-1",
        suite: str = "bookworm",
        binaries: Iterable[str] = ("x",),
        build_depends: Iterable[str] = (),
        changes: str = "",
    ) -> Added:
        """A source package ``name`` ``version`` and its binaries (``Architecture: any``, built here) in ``suite``.

        Call :meth:`publish` afterwards. ``changes`` is the changelog entry's text (a default names the version)."""
        if suite not in self.suites:
            raise ValueError(f"{suite} is not one of {self.suites}")
        bins = tuple(binaries)
        pool = self.pool(suite, name)
        pool.mkdir(parents=True, exist_ok=True)
        dsc = self._source(
            name=name,
            version=version,
            suite=suite,
            binaries=bins,
            build_depends=tuple(build_depends),
            changes=changes or f"Version {version}.",
            pool=pool,
        )
        debs = tuple(self._binary(name, version, b, pool) for b in bins)
        added = Added(name, version, suite, bins, dsc, debs)
        self.added.append(added)
        return added

    def _orig(self, name: str, upstream: str) -> Path:
        """The orig tarball of one upstream version, made once and shared by every revision and suite."""
        orig = self.root / "work" / "orig" / f"{name}_{upstream}.orig.tar.gz"
        if not orig.exists():
            tree = self.root / "work" / "orig" / f"{name}-{upstream}"
            tree.mkdir(parents=True)
            (tree / "Makefile").write_text("all: built.txt\n\nbuilt.txt: src.txt\n\tcp src.txt built.txt\n")
            (tree / "src.txt").write_text(f"{name} {upstream}\n")
            _deterministic_tar_gz(tree, f"{name}-{upstream}", orig)
        return orig

    def _source(
        self,
        *,
        name: str,
        version: str,
        suite: str,
        binaries: tuple[str, ...],
        build_depends: tuple[str, ...],
        changes: str,
        pool: Path,
    ) -> Path:
        upstream = _upstream(version)
        work = self.root / "work" / f"{name}_{version}_{suite}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        orig = shutil.copy(self._orig(name, upstream), work)
        with tarfile.open(orig) as tar:
            tar.extractall(work, filter="data")
        debian = work / f"{name}-{upstream}" / "debian"
        (debian / "source").mkdir(parents=True)
        (debian / "source" / "format").write_text("3.0 (quilt)\n")
        bd = f"Build-Depends: {', '.join(build_depends)}\n" if build_depends else ""
        stanzas = "".join(
            f"\nPackage: {b}\nArchitecture: any\nDescription: test package {b}\n {b} of the source {name}.\n"
            for b in binaries
        )
        (debian / "control").write_text(
            f"Source: {name}\nSection: misc\nPriority: optional\nMaintainer: {MAINTAINER}\n{bd}"
            f"Standards-Version: 4.6.2\nRules-Requires-Root: no\n{stanzas}"
        )
        (debian / "changelog").write_text(
            f"{name} ({version}) {suite}; urgency=medium\n\n  * {changes}\n\n -- {MAINTAINER}  {DATE}\n"
        )
        rules = debian / "rules"
        rules.write_text(RULES.format(binaries=" ".join(binaries)))
        rules.chmod(0o755)
        _run(["dpkg-source", "-b", f"{name}-{upstream}"], cwd=work, env=os.environ | {"LC_ALL": "C"})
        dsc_name = f"{name}_{version.split(':', 1)[-1]}.dsc"
        for path in work.iterdir():
            if path.is_file() and path.name.startswith(f"{name}_"):
                shutil.copy(path, pool / path.name)
        return pool / dsc_name

    def _binary(self, source: str, version: str, package: str, pool: Path) -> Path:
        tree = self.root / "work" / f"deb-{package}_{version}"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "usr" / "share" / package).mkdir(parents=True)
        (tree / "usr" / "share" / package / "built.txt").write_text(f"{source} {version}\n")
        (tree / "DEBIAN" / "control").write_text(
            f"Package: {package}\nSource: {source}\nVersion: {version}\nArchitecture: {self.arch}\n"
            f"Maintainer: {MAINTAINER}\nDescription: test package {package}\n"
        )
        deb = pool / f"{package}_{version.split(':', 1)[-1]}_{self.arch}.deb"
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb], env=os.environ | {"LC_ALL": "C"})
        return deb

    def remove_source_files(self, name: str, version: str) -> list[Path]:
        """Delete the .dsc and the revision's own files from every pool (the orig, shared, stays).

        The Sources index still lists the version: apt-get source then fails as on a mirror that serves the
        index but not the files. Returns the files removed."""
        stem = f"{name}_{version.split(':', 1)[-1]}"
        removed = []
        for suite in self.suites:
            for path in sorted(self.pool(suite, name).glob(f"{stem}.*")) if self.pool(suite, name).is_dir() else []:
                if path.suffix != ".deb":
                    path.unlink()
                    removed.append(path)
        return removed

    # -- indexes ------------------------------------------------------------------------------------------------
    def publish(self) -> None:
        """Write every suite's Sources, Packages and Release, then ``apt-get update`` with the isolated config."""
        for suite in self.suites:
            self._index(suite)
        _run(["apt-get", "update", "-q"], env=self.env)

    def _index(self, suite: str) -> None:
        dists = self.archive_dir / "dists" / suite
        sources_dir, binary_dir = dists / "main" / "source", dists / "main" / f"binary-{self.arch}"
        sources_dir.mkdir(parents=True, exist_ok=True)
        binary_dir.mkdir(parents=True, exist_ok=True)
        pool = f"pool/{suite}"
        (self.archive_dir / pool).mkdir(parents=True, exist_ok=True)
        env = os.environ | {"LC_ALL": "C"}
        (sources_dir / "Sources").write_text(_run(["dpkg-scansources", pool], cwd=self.archive_dir, env=env))
        (binary_dir / "Packages").write_text(
            _run(["dpkg-scanpackages", "--multiversion", "-a", self.arch, pool], cwd=self.archive_dir, env=env)
        )
        files = [sources_dir / "Sources", binary_dir / "Packages"]
        sums = "".join(
            f" {hashlib.sha256(f.read_bytes()).hexdigest()} {f.stat().st_size} {f.relative_to(dists)}\n" for f in files
        )
        label = f"{self.origin}-Security" if "security" in suite else self.origin
        (dists / "Release").write_text(
            textwrap.dedent(
                f"""\
                Origin: {self.origin}
                Label: {label}
                Suite: {suite}
                Codename: {suite}
                Date: {DATE}
                Architectures: {self.arch}
                Components: main
                Description: MANGOS test archive {suite}
                SHA256:
                """
            )
            + sums
        )


__all__ = ["ARCH", "SUITES", "Added", "LocalArchive"]


def tiny_deb(dest: Path, name: str, version: str, depends: str = "") -> Path:
    """A real .deb made by dpkg-deb: one file (``/usr/share/NAME/built.txt``), ``depends`` as its Depends field,
    named as the archive names it (no epoch in the file name); the same bytes every time."""
    tree = dest / f"tree-{name}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@mangos.invalid>\n"
    control += f"Depends: {depends}\n" if depends else ""
    (tree / "DEBIAN" / "control").write_text(control + f"Description: farm build of {name}\n")
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "built.txt").write_text(f"{name} {version}\n")
    deb = dest / f"{name}_{version.rsplit(':', maxsplit=1)[-1]}_amd64.deb"
    require("dpkg-deb")
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb],
         env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"})  # fmt: skip
    return deb
