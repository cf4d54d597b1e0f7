"""Recipes: one TOML file per source package, validated strictly.

A recipe pins its source to a full git commit. A human ``ref`` (tag or branch) may be given, but it is only
checked against the commit when the source is fetched, never followed: the commit is the identity.

Every problem found while loading names the file, the field and the fix; all problems in a directory are
reported together.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from farm.errors import E, ErrorGroup, FarmError
from farm.identity import digest_of

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = {"PATH", "HOME", "SRC", "OUT", "DEPS", "SOURCE_DATE_EPOCH", "TZ", "LC_ALL", "LANG"}

# The schema as data: table -> {key: (python type, required, help)}.
SCHEMA: dict[str, dict[str, tuple[type, bool, str]]] = {
    "": {
        "name": (str, True, 'the package name, e.g. name = "zlib"'),
        "version": (str, True, 'the upstream version, e.g. version = "1.3"'),
        "description": (str, False, "one line about the package"),
        "build-depends": (list, False, 'names of other recipes, e.g. build-depends = ["zlib"]'),
        "outputs": (list, True, 'paths under $OUT to publish, e.g. outputs = ["bin/hello", "lib/"]'),
        "source": (dict, True, "a [source] table with git and commit"),
        "build": (dict, True, "a [build] table with steps"),
    },
    "source": {
        "git": (str, False, 'the repository URL or a path relative to the recipe, e.g. git = "https://..."'),
        "dsc": (str, False, 'a Debian source package from the archive, e.g. dsc = "hello=2.10-3"'),
        "commit": (str, True, "the full 40-hex commit id to build"),
        "ref": (str, False, "a tag or branch the commit must be on (checked, never followed)"),
    },
    "build": {
        "kind": (str, False, 'how to build: "script" (steps, the default) or "debian" (dpkg-buildpackage)'),
        "steps": (list, False, 'shell steps run in the sandbox, e.g. steps = ["make", "make install"]'),
        "env": (dict, False, 'extra environment variables, e.g. env = { CFLAGS = "-O2" }'),
        "environment": (str, False, 'the pinned build environment of a debian build, e.g. "bookworm-amd64"'),
        "archive": (list, False, "pinned archive packages of a debian build (written by 'recipes import')"),
    },
}


@dataclass(frozen=True)
class Source:
    git: str
    commit: str
    ref: str | None = None
    dsc: str = ""  # NAME=VERSION of a Debian source package, imported deterministically (farm.sources.dsc)


PIN_KEYS = ("package", "version", "arch", "sha256")
KINDS = ("script", "debian")


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    source: Source
    steps: tuple[str, ...]
    outputs: tuple[str, ...]
    build_depends: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    description: str = ""
    kind: str = "script"
    environment: str = ""
    archive: tuple[tuple[tuple[str, str], ...], ...] = ()  # pins, each as sorted (key, value) pairs
    path: Path = Path("<memory>")

    def content(self) -> dict[str, Any]:
        """What a build key and provenance record of the recipe: everything but where the file lies."""
        source: dict[str, Any] = {"commit": self.source.commit}
        if self.source.dsc:
            source["dsc"] = self.source.dsc
        else:
            source["git"] = self.source.git
        if self.source.ref:
            source["ref"] = self.source.ref
        build: dict[str, Any] = {"steps": list(self.steps), "env": dict(self.env)}
        if self.kind != "script":  # script recipes keep the content (and so the keys) they always had
            build |= {"kind": self.kind, "environment": self.environment, "archive": self.pins()}
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "build-depends": list(self.build_depends),
            "outputs": list(self.outputs),
            "source": source,
            "build": build,
        }

    def pins(self) -> list[dict[str, str]]:
        return [dict(p) for p in self.archive]

    @property
    def digest(self) -> str:
        return digest_of(self.content())

    @property
    def git_location(self) -> str:
        """Where to fetch from: URLs as written, relative paths resolved against the recipe's directory."""
        if self.source.dsc:
            return f"dsc:{self.source.dsc}"
        url = self.source.git
        if "://" in url or url.startswith(("git@", "/")):
            return url
        return str((self.path.parent / url).resolve())

    @classmethod
    def from_content(cls, content: Mapping[str, Any], path: Path = Path("<memory>")) -> Recipe:
        """Rebuild a recipe from :meth:`content` (how workers receive it)."""
        return parse(dict(content), path)


def _err(code: str, path: Path, field: str, message: str, hint: str) -> FarmError:
    return FarmError(code, message, hint=hint, file=path, field=field)


def _check_table(table: Mapping[str, Any], schema_name: str, path: Path, errors: list[FarmError]) -> None:
    schema = SCHEMA[schema_name]
    prefix = f"{schema_name}." if schema_name else ""
    for key in table:
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"allowed keys: {', '.join(schema)}"
            errors.append(_err(E.RECIPE_UNKNOWN_KEY, path, prefix + key, "unknown key", hint))
    for key, (type_, required, help_) in schema.items():
        if key not in table:
            if required:
                errors.append(_err(E.RECIPE_MISSING, path, prefix + key, "missing required field", help_))
            continue
        if not isinstance(table[key], type_):
            got = type(table[key]).__name__
            errors.append(_err(E.RECIPE_TYPE, path, prefix + key, f"expected {type_.__name__}, got {got}", help_))


def _string_list(value: Any, path: Path, field: str, errors: list[FarmError], example: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        errors.append(_err(E.RECIPE_TYPE, path, field, "every entry must be a non-empty string", f"e.g. {example}"))
        return ()
    return tuple(value)


def check_output_path(value: str) -> str | None:
    """Why an output path is unacceptable, or None. Outputs must stay inside $OUT."""
    if value.startswith("/"):
        return "is absolute"
    p = PurePosixPath(value)
    if ".." in p.parts:
        return "contains '..'"
    if "\\" in value or "\0" in value:
        return "contains a backslash or NUL"
    if str(p) in ("", "."):
        return "names the output directory itself"
    return None


def _check_commit(commit: str, path: Path, errors: list[FarmError]) -> None:
    if COMMIT_RE.fullmatch(commit):
        return
    if HEX_RE.fullmatch(commit) and len(commit) < 40:
        msg, hint = (
            f"'{commit}' is an abbreviated commit",
            "write the full 40-hex commit id (git rev-parse <rev>)",
        )
    elif HEX_RE.fullmatch(commit):
        msg, hint = f"'{commit}' is not a 40-hex commit id", "use lowercase, 40 hex digits (a sha1 commit)"
    else:
        msg, hint = (
            f"'{commit}' looks like a branch or tag name, not a commit",
            f"pin the full commit (git rev-parse {commit}) and move the name to source.ref",
        )
    errors.append(_err(E.RECIPE_COMMIT, path, "source.commit", msg, hint))


def _str(table: Mapping[str, Any], key: str, default: str = "") -> str:
    value = table.get(key, default)
    return value if isinstance(value, str) else default


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _check_identity(data: Mapping[str, Any], path: Path, errors: list[FarmError]) -> None:
    name = data.get("name")
    if isinstance(name, str) and not NAME_RE.fullmatch(name):
        errors.append(
            _err(
                E.RECIPE_VALUE,
                path,
                "name",
                f"'{name}' is not a valid package name",
                "use lowercase letters, digits and + . - (Debian's rule), starting with a letter or digit",
            )
        )
    version = data.get("version")
    if isinstance(version, str) and not version.strip():
        errors.append(_err(E.RECIPE_VALUE, path, "version", "must not be empty", 'e.g. version = "1.0"'))


def _check_source(source: Mapping[str, Any], path: Path, errors: list[FarmError]) -> None:
    if isinstance(source.get("commit"), str):
        _check_commit(source["commit"], path, errors)
    if "git" not in source and "dsc" not in source and source:
        errors.append(
            _err(
                E.RECIPE_MISSING,
                path,
                "source.git",
                "missing required field",
                'a git repository (git = "https://...") or a Debian source package (dsc = "hello=2.10-3")',
            )
        )
    elif "git" in source and "dsc" in source:
        errors.append(
            _err(E.RECIPE_VALUE, path, "source.dsc", "give source.git or source.dsc, not both", "remove one of them")
        )
    dsc = source.get("dsc")
    if isinstance(dsc, str) and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+=(?:[0-9]+:)?[0-9A-Za-z][0-9A-Za-z.+~-]*", dsc):
        errors.append(
            _err(E.RECIPE_VALUE, path, "source.dsc", f"'{dsc}' is not NAME=VERSION", 'e.g. dsc = "hello=2.10-3"')
        )
    git = source.get("git")
    if isinstance(git, str) and not git.strip():
        errors.append(_err(E.RECIPE_VALUE, path, "source.git", "must not be empty", SCHEMA["source"]["git"][2]))


def _non_empty(
    table: Mapping[str, Any], key: str, field: str, what: str, *, path: Path, errors: list[FarmError]
) -> None:
    if isinstance(table.get(key), list) and not table[key]:
        table_name = field.split(".", maxsplit=1)[0] if "." in field else ""
        errors.append(_err(E.RECIPE_VALUE, path, field, f"needs at least {what}", SCHEMA[table_name][key][2]))


def _check_depends(depends: tuple[str, ...], name: str, path: Path, errors: list[FarmError]) -> None:
    if name in depends:
        errors.append(_err(E.RECIPE_CYCLE, path, "build-depends", f"'{name}' depends on itself", "remove it"))
    if len(set(depends)) != len(depends):
        errors.append(_err(E.RECIPE_VALUE, path, "build-depends", "lists a recipe twice", "list each dependency once"))


def _check_outputs(outputs: tuple[str, ...], path: Path, errors: list[FarmError]) -> None:
    for out in outputs:
        why = check_output_path(out)
        if why:
            errors.append(
                _err(
                    E.RECIPE_OUTPUT_PATH,
                    path,
                    "outputs",
                    f"'{out}' {why}: outputs must stay inside the output directory",
                    "write a path relative to $OUT, e.g. 'bin/hello'",
                )
            )
    names = [PurePosixPath(o).name for o in outputs]
    if len(set(names)) != len(names):
        errors.append(
            _err(
                E.RECIPE_OUTPUT_PATH,
                path,
                "outputs",
                "two outputs share a file name; artifacts are named by it",
                "publish a common parent directory instead",
            )
        )


def _parse_env(build: Mapping[str, Any], path: Path, errors: list[FarmError]) -> tuple[tuple[str, str], ...]:
    env = build.get("env")
    items: list[tuple[str, str]] = []
    for key, value in env.items() if isinstance(env, dict) else ():
        if not ENV_NAME_RE.fullmatch(key) or key in RESERVED_ENV or not isinstance(value, str):
            errors.append(
                _err(
                    E.RECIPE_VALUE,
                    path,
                    f"build.env.{key}",
                    "invalid or reserved variable, or a non-string value",
                    f"use a string value and a name other than {', '.join(sorted(RESERVED_ENV))}",
                )
            )
        else:
            items.append((key, value))
    return tuple(sorted(items))


def _parse_debian(
    build: Mapping[str, Any], path: Path, errors: list[FarmError], *, present: bool
) -> tuple[str, str, tuple[Any, ...]]:
    """kind, environment and archive pins; the debian kind needs an environment and runs dpkg-buildpackage."""
    kind = build.get("kind", "script")
    if kind not in KINDS:
        errors.append(_err(E.RECIPE_VALUE, path, "build.kind", f"unknown kind '{kind}'", f"use one of {KINDS}"))
        return "script", "", ()
    environment = build.get("environment", "")
    if kind == "debian" and not environment:
        errors.append(
            _err(
                E.RECIPE_MISSING,
                path,
                "build.environment",
                "a debian build needs one",
                SCHEMA["build"]["environment"][2],
            )
        )
    if kind == "script" and ("environment" in build or "archive" in build):
        errors.append(
            _err(
                E.RECIPE_VALUE,
                path,
                "build.kind",
                'environment and archive need kind = "debian"',
                'add kind = "debian"',
            )
        )
    pins = []
    for i, pin in enumerate(build.get("archive", []) if isinstance(build.get("archive"), list) else []):
        ok = isinstance(pin, dict) and set(pin) == set(PIN_KEYS) and all(isinstance(v, str) for v in pin.values())
        if not ok or not re.fullmatch(r"[0-9a-f]{64}", str(pin.get("sha256", ""))):
            errors.append(
                _err(
                    E.RECIPE_VALUE,
                    path,
                    f"build.archive[{i}]",
                    "a pin needs package, version, arch and a sha256",
                    'e.g. { package = "debhelper", version = "13.11.4", arch = "all", sha256 = "..." }',
                )
            )
            continue
        pins.append(tuple(sorted(pin.items())))
    if kind == "script" and "steps" not in build and present:
        errors.append(
            _err(E.RECIPE_MISSING, path, "build.steps", "missing required field", SCHEMA["build"]["steps"][2])
        )
    return kind, environment if isinstance(environment, str) else "", tuple(pins)


def parse(data: dict[str, Any], path: Path) -> Recipe:
    """Validate one recipe document. Raises ErrorGroup listing every problem in it."""
    errors: list[FarmError] = []
    _check_table(data, "", path, errors)
    source, build = _table(data, "source"), _table(data, "build")
    if isinstance(data.get("source"), dict):
        _check_table(source, "source", path, errors)
    if isinstance(data.get("build"), dict):
        _check_table(build, "build", path, errors)
    _check_identity(data, path, errors)
    _check_source(source, path, errors)
    name = _str(data, "name")
    depends = _string_list(data.get("build-depends", []), path, "build-depends", errors, '["zlib"]')
    _check_depends(depends, name, path, errors)
    steps = _string_list(build.get("steps", []), path, "build.steps", errors, '["make"]')
    if build.get("kind", "script") == "script":  # a debian build's step is dpkg-buildpackage
        _non_empty(build, "steps", "build.steps", "one step", path=path, errors=errors)
    outputs = _string_list(data.get("outputs", []), path, "outputs", errors, '["bin/hello"]')
    _non_empty(data, "outputs", "outputs", "one path", path=path, errors=errors)
    _check_outputs(outputs, path, errors)
    env = _parse_env(build, path, errors)
    kind, environment, pins = _parse_debian(build, path, errors, present=isinstance(data.get("build"), dict))
    if errors:
        raise ErrorGroup(errors)
    ref = source.get("ref")
    return Recipe(
        name=name,
        version=_str(data, "version"),
        description=_str(data, "description"),
        source=Source(
            git=_str(source, "git"),
            commit=_str(source, "commit"),
            ref=ref if isinstance(ref, str) else None,
            dsc=_str(source, "dsc"),
        ),
        kind=kind,
        environment=environment,
        archive=pins,
        steps=steps,
        outputs=outputs,
        build_depends=depends,
        env=env,
        path=path,
    )


def load_file(path: Path) -> Recipe:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FarmError(
            E.RECIPE_DIR, f"cannot read: {exc.strerror}", file=path, hint="check the path and permissions"
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FarmError(E.RECIPE_SYNTAX, "not UTF-8 text", file=path, hint="save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise FarmError(
            E.RECIPE_SYNTAX,
            f"invalid TOML: {exc}",
            file=path,
            hint="fix the syntax at the position shown (https://toml.io)",
        ) from None
    return parse(data, path)


@dataclass(frozen=True)
class RecipeSet:
    """All recipes of a directory, by name, checked as a whole (duplicates, dependencies, cycles)."""

    recipes: Mapping[str, Recipe]
    directory: Path

    def __iter__(self) -> Iterator[Recipe]:
        return iter(self.recipes.values())

    def __len__(self) -> int:
        return len(self.recipes)


def load_dir(directory: Path) -> RecipeSet:
    from farm.graph import find_cycle  # graph is pure and imports nothing from here

    if not directory.is_dir():
        raise FarmError(
            E.RECIPE_DIR,
            "not a directory of recipes",
            file=directory,
            hint="pass the directory holding the *.toml recipes, e.g. 'recipes/'",
        )
    files = sorted(directory.rglob("*.toml"))  # a set may be grouped in subdirectories (recipes/debian/)
    if not files:
        raise FarmError(
            E.RECIPE_DIR,
            "holds no *.toml recipes",
            file=directory,
            hint="add recipes or pass another directory",
        )
    errors: list[FarmError] = []
    by_name: dict[str, Recipe] = {}
    for path in files:
        try:
            recipe = load_file(path)
        except ErrorGroup as group:
            errors.extend(group.errors)
            continue
        except FarmError as exc:
            errors.append(exc)
            continue
        if recipe.name in by_name:
            other = by_name[recipe.name].path
            errors.append(
                _err(
                    E.RECIPE_DUPLICATE,
                    path,
                    "name",
                    f"recipe '{recipe.name}' is also defined in {other}",
                    "rename one of them or delete the duplicate",
                )
            )
            continue
        by_name[recipe.name] = recipe
    for recipe in by_name.values():
        for dep in recipe.build_depends:
            if dep not in by_name:
                close = difflib.get_close_matches(dep, list(by_name), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"add a recipe named '{dep}' to {directory}"
                errors.append(
                    _err(
                        E.RECIPE_UNKNOWN_DEP,
                        recipe.path,
                        "build-depends",
                        f"depends on '{dep}', which no recipe defines",
                        hint,
                    )
                )
    if not errors:
        cycle = find_cycle({n: r.build_depends for n, r in by_name.items()})
        if cycle:
            errors.append(
                _err(
                    E.RECIPE_CYCLE,
                    by_name[cycle[0]].path,
                    "build-depends",
                    "dependency cycle: " + " -> ".join(cycle),
                    "break the cycle by removing one of these build-depends",
                )
            )
    if errors:
        raise ErrorGroup(errors)
    return RecipeSet(recipes=dict(sorted(by_name.items())), directory=directory)
