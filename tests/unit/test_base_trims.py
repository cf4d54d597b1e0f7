"""The trims of the base set's big packages (``build.options``, ``build.profiles`` in recipes/base).

A build must finish inside about 2.5 hours on 2 cores, so the recipes of the biggest sources leave out what the image
does not install (test suites, languages, multilib flavours, udebs). Checked here:

- always (CI included: the fields alone): the big packages are trimmed, every option and profile is well formed,
  carries its reason in a comment (the text a re-import keeps, :mod:`farm.archive.trims`), a ``nocheck`` profile
  comes with the ``nocheck`` option, and every profile is one Debian defines (or the package's own ``pkg.SRC.*``);
- with the set's home (``MANGOS_BASE_HOME``, default ``~/mangos-base``, where ``make base-import`` put the imported
  sources; CI has none, so these skip there with that reason): from the source at the recipe's commit, every option
  and profile is one the package reads, and every binary package still needed is still built under the trims, by
  debian/control's Build-Profiles and, for the sources whose package lists debian/rules computes (gcc-12 regenerates
  its control from the enabled languages), by evaluating those lists with ``make`` (seconds, nothing is built).
  "Needed" is what the image installs from the source plus what the set's other recipes build against from it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from debian import deb822

from farm.archive.trims import existing_trims
from farm.recipes import Recipe, load_dir
from farm.sources.dsc_git import repo_path
from tests.lib.tools import require

BASE = Path(__file__).resolve().parents[2] / "recipes" / "base"
HOME = Path(os.environ.get("MANGOS_BASE_HOME") or Path.home() / "mangos-base")
ARCH = "amd64"

IMAGE_BINARIES = {
    # The image's binary packages (default image and docker profile: the resolution `image lock` and `recipes import
    # --image --profile docker` make) from each trimmed source. A trimmed recipe missing here fails the test.
    "gcc-12": ("gcc-12-base", "libgcc-s1"),
    "glibc": ("libc-bin", "libc6"),
    "db5.3": ("libdb5.3",),
    "runc": ("runc",),
    "cryptsetup": ("libcryptsetup12",),
    "systemd": ("libsystemd-shared", "libsystemd0", "libudev1", "systemd", "systemd-sysv", "udev"),
    "util-linux": (
        "util-linux",
        "mount",
        "bsdutils",
        "fdisk",
        "libblkid1",
        "libfdisk1",
        "libmount1",
        "libsmartcols1",
        "libuuid1",
    ),
}
BIG = ("gcc-12", "glibc", "db5.3")  # builds that cannot fit 2.5 h on 2 cores untrimmed

# Build profiles Debian defines (wiki.debian.org/BuildProfileSpec); a package adds its own as pkg.SOURCE.NAME.
PROFILES = frozenset(
    {
        *("cross", "nobiarch", "nocheck", "nocil", "nodoc", "nogir", "nogolang", "noguile", "noinsttest", "nojava"),
        *("nolua", "noocaml", "noperl", "nopython", "noruby", "noudeb", "nowasm", "nowindows", "stage1", "stage2"),
    }
)
# DEB_BUILD_OPTIONS words dpkg and debhelper honour for every package (Debian Policy 4.9.1, debhelper(7)); any other
# word must be one the package's own debian/rules* reads.
GENERIC_OPTIONS = frozenset({"nocheck", "nodoc", "noopt", "nostrip", "terse", "noautodbgsym", "nodwz", "reproducible"})

# Sources whose debian/rules computes the package list: the makefile and variables that hold it, and the name there
# of each binary package checked (gcc's rules call its packages by short names).
RULES_LISTS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "gcc-12": (
        "debian/rules2",
        ("arch_binaries", "indep_binaries"),
        {
            "gcc-12-base": "base",
            "libgcc-s1": "libgcc",
            "gcc-12": "gcc",
            "g++-12": "cxx",
            "cpp-12": "cpp",
            "libgcc-12-dev": "libgcc-dev",
            "libstdc++-12-dev": "libstdcxx-dev",
            "libstdc++6": "libstdcxx",
        },
    ),
    "glibc": (
        "debian/rules",
        ("DEB_ARCH_REGULAR_PACKAGES", "DEB_INDEP_REGULAR_PACKAGES", "DEB_UDEB_PACKAGES"),
        {},  # glibc's lists name the packages themselves
    ),
}


def _base() -> dict[str, Recipe]:
    return dict(load_dir(BASE).recipes)


def _trimmed() -> dict[str, Recipe]:
    return {n: r for n, r in _base().items() if r.options or r.profiles or not r.arch_all}


# -- the fields ---------------------------------------------------------------------------------------------------
_ITEM = re.compile(r'^\s*"[^"]*"\s*,?\s*(#\s*\S.*)?$')
_ONE_LINE = re.compile(r"^\s*(options|profiles)\s*=\s*\[.*\]\s*(#\s*\S.*)?$")
_FLAG = re.compile(r"^\s*arch-all\s*=\s*(?:true|false)\s*(#\s*\S.*)?$")


def unreasoned(block: str) -> list[str]:
    """The lines of a trims block whose values have no reason: an array item needs a comment on its line or above
    it inside the array (a comment covers the items below it), a one-line array a comment on its line."""
    bad, covered, above = [], False, False
    for line in block.splitlines():
        stripped = line.strip()
        one = _ONE_LINE.match(line)
        flag = _FLAG.match(line)
        if flag:  # arch-all = false: a comment on its line or right above it
            bad += [] if flag.group(1) or above else [stripped]
        elif one:
            bad += [] if one.group(2) else [stripped]
        elif re.match(r"^\s*(options|profiles)\s*=\s*\[\s*$", line):
            covered = False
        elif stripped.startswith("#"):
            covered = True
        elif (item := _ITEM.match(line)) and not (item.group(1) or covered):
            bad.append(stripped)
        above = stripped.startswith("#")
    return bad


def test_the_big_packages_are_trimmed() -> None:
    trimmed = _trimmed()
    assert set(BIG) <= set(trimmed), f"untrimmed: {sorted(set(BIG) - set(trimmed))} (a re-import dropped them?)"
    assert set(trimmed) <= set(IMAGE_BINARIES), "add the image's binaries of each trimmed recipe to IMAGE_BINARIES"


@pytest.mark.parametrize("name", sorted(IMAGE_BINARIES))
def test_the_fields_are_well_formed_and_reasoned(name: str) -> None:
    recipe = _base()[name]
    assert recipe.kind == "debian"
    for profile in recipe.profiles:
        assert profile in PROFILES or profile.startswith(f"pkg.{name}."), f"{name}: unknown build profile {profile}"
    for option in recipe.options:
        word, _, value = option.partition("=")
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", word), option
        assert not value or all(re.fullmatch(r"[a-z0-9+.-]+", v) for v in value.split(",")), option
    if "nocheck" in recipe.profiles:  # the profile drops the tests' build-deps; the tests must not run then
        assert "nocheck" in recipe.options, f"{name}: the nocheck profile without the nocheck option"
    block = existing_trims(recipe.path)  # what a re-import carries over, comments included
    assert block, f"{name}: its trims are not where a re-import finds them ([build] options/profiles)"
    assert not unreasoned(block), f"{name}: no reason given for {unreasoned(block)}"


def test_a_value_without_a_reason_is_found() -> None:
    block = 'options = [\n  # why\n  "a",\n  "b",\n]\nprofiles = [\n  "c",  # why\n  "d",\n]\nprofiles = ["e"]\n'
    assert unreasoned(block) == ['"d",', 'profiles = ["e"]']
    assert unreasoned("arch-all = false\n# why\narch-all = false\narch-all = false  # why\n") == ["arch-all = false"]


# -- against the source at the recipe's commit ---------------------------------------------------------------------
def _repo(recipe: Recipe) -> Path:
    if not HOME.is_dir():
        pytest.skip(f"no base-set home at {HOME} (make base-import writes it; CI has none): fields checked only")
    version = recipe.source.dsc.partition("=")[2]
    repo = repo_path(HOME / "cache", recipe.name, version)
    if not repo.is_dir():
        pytest.skip(f"{recipe.name}'s imported source is not in {HOME} ({repo.name}): run make base-import")
    return repo


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run([require("git"), "--git-dir", str(repo), *args], check=False, capture_output=True, text=True)
    if done.returncode != 0 and not (args[0] == "grep" and done.returncode == 1):  # grep: 1 is "no line matched"
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def _arch_ok(arches: object) -> bool:
    if not arches:
        return True
    matches = {ARCH, "any", "linux-any", f"any-{ARCH}"}
    positive = [a.arch for a in arches if a.enabled]  # type: ignore[attr-defined]
    negative = [a.arch for a in arches if not a.enabled]  # type: ignore[attr-defined]
    return any(a in matches for a in positive) if positive else not any(a in matches for a in negative)


def _profiles_ok(restrictions: object, profiles: tuple[str, ...]) -> bool:
    if not restrictions:
        return True
    return any(all((t.profile in profiles) == t.enabled for t in group) for group in restrictions)  # type: ignore[attr-defined]


def built_binaries(control: str, profiles: tuple[str, ...], *, arch_all: bool = True) -> set[str]:
    """The binary packages debian/control has built for amd64 under ``profiles`` (no cross build); without the
    Architecture: all ones when ``arch_all`` is false (``dpkg-buildpackage -B``)."""
    out = set()
    for para in list(deb822.Deb822.iter_paragraphs(control))[1:]:
        arches = set(para.get("Architecture", "").split())
        if not arches & {ARCH, "any", "linux-any", f"any-{ARCH}", *(["all"] if arch_all else [])}:
            continue
        field = para.get("Build-Profiles", "")
        restrictions = deb822.PkgRelation.parse_relations(f"x {field}")[0][0]["restrictions"] if field else None
        if _profiles_ok(restrictions, profiles):
            out.add(para["Package"])
    return out


def build_depends(control: str, profiles: tuple[str, ...]) -> set[str]:
    """The packages a build of the source installs by name (first alternative) under ``profiles``, for amd64."""
    source = next(deb822.Deb822.iter_paragraphs(control))
    names = set()
    for field in ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep"):
        if not source.get(field):
            continue
        for alternatives in deb822.PkgRelation.parse_relations(source[field]):
            rel = alternatives[0]
            if _arch_ok(rel["arch"]) and _profiles_ok(rel["restrictions"], profiles):
                names.add(rel["name"])
    return names


def needed(name: str, recipes: dict[str, Recipe]) -> set[str]:
    """The binaries of ``name`` the image installs and the set's recipes that build against it take by name."""
    recipe = recipes[name]
    produced = built_binaries(_git(_repo(recipe), "show", f"{recipe.source.commit}:debian/control"), ())
    out = set(IMAGE_BINARIES[name])
    for dep in recipes.values():
        if name in dep.build_depends:
            control = _git(_repo(dep), "show", f"{dep.source.commit}:debian/control")
            out |= build_depends(control, dep.profiles) & produced
    return out


@pytest.mark.parametrize("name", sorted(IMAGE_BINARIES))
def test_every_needed_binary_is_still_built(name: str) -> None:
    recipes = _base()
    recipe = recipes[name]
    repo = _repo(recipe)
    control = _git(repo, "show", f"{recipe.source.commit}:debian/control")
    want = needed(name, recipes)
    missing = want - built_binaries(control, recipe.profiles, arch_all=recipe.arch_all)
    assert not missing, f"{name}: the profiles {recipe.profiles} drop {sorted(missing)}, which are needed"
    patterns = ("-e", "DEB_BUILD", "-e", "findstring", "-e", "filter")
    rules = _git(
        repo, "grep", "-h", "--text", *patterns, recipe.source.commit, "--", "debian/rules*", "debian/sysdeps/*"
    )
    for profile in recipe.profiles:  # each one does something: a Build-Profiles restriction or a test in the rules
        assert re.search(rf"[<! ]{re.escape(profile)}[ >]", control) or profile in rules, f"{name}: {profile} unused"
    for option in recipe.options:
        word = option.partition("=")[0]
        assert word in GENERIC_OPTIONS or word in rules, f"{name}: debian/rules* never reads the option {word}"


PRINT = """include {rules}
print-lists:
\t@echo LISTS: {variables}
"""


def rules_lists(
    name: str, options: tuple[str, ...], profiles: tuple[str, ...], tmp: Path, *, arch_all: bool = True
) -> set[str]:
    """The package lists debian/rules computes under these options and profiles (``make`` evaluates the variables;
    nothing is configured or built); without the Architecture: all lists when ``arch_all`` is false."""
    recipe = _base()[name]
    repo = _repo(recipe)
    rules, variables, _ = RULES_LISTS[name]
    if not arch_all:
        variables = tuple(v for v in variables if "indep" not in v.lower())
    for tool in ("make", "dpkg-architecture", "dpkg-parsechangelog", "lsb_release"):
        require(tool)
    if not (tmp / "debian").is_dir():
        archive = subprocess.run(
            ["git", "--git-dir", str(repo), "archive", recipe.source.commit, "debian"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        (tmp / "debian" / "rules.parameters").touch()  # gcc's is generated from the unpacked upstream sources
    (tmp / "print.mk").write_text(PRINT.format(rules=rules, variables=" ".join(f"$({v})" for v in variables)))
    env = os.environ | {
        "DEB_BUILD_OPTIONS": " ".join([*options, "parallel=2"]),
        "DEB_BUILD_PROFILES": " ".join(profiles),
    }
    result = subprocess.run(
        ["make", "-s", "-f", "print.mk", "print-lists"],
        check=False,
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("LISTS: ")]
    assert result.returncode == 0 and lines, result.stderr[-2000:]
    return set(lines[-1].split()[1:])


@pytest.mark.parametrize("name", sorted(RULES_LISTS))
def test_the_rules_still_build_every_needed_binary(name: str, tmp_path: Path) -> None:
    recipe = _base()[name]
    names = RULES_LISTS[name][2]
    want = needed(name, _base())
    unmapped = {b for b in want if names and b not in names}
    assert not unmapped, f"add the name debian/rules uses for {sorted(unmapped)} to RULES_LISTS"
    trimmed = rules_lists(name, recipe.options, recipe.profiles, tmp_path, arch_all=recipe.arch_all)
    default = rules_lists(name, (), (), tmp_path)
    missing = sorted(b for b in want if names.get(b, b) not in trimmed)
    assert not missing, f"{name}: under {recipe.options} {recipe.profiles} debian/rules no longer builds {missing}"
    assert {names.get(b, b) for b in want} <= default
    assert trimmed < default, f"{name}: the trims leave out nothing"  # they are read, and they do drop packages
