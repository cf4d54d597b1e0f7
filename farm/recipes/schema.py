"""The recipe schema and its checks: every problem found names the file, the field and the fix.

The schema is data (table -> key -> type, required, help); the checks append every problem they find to a list,
so that all problems of a recipe, and of a directory, are reported together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError, RecipeError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = {"PATH", "HOME", "SRC", "OUT", "DEPS", "INPUTS", "SOURCE_DATE_EPOCH", "TZ", "LC_ALL", "LANG"}

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
        "patches": (
            list,
            False,
            "patch files applied in order on top of the commit, relative to the recipe's directory or a parent, "
            'e.g. patches = ["patches/hello/0001-fix.patch"]',
        ),
        "bootstrap": (list, False, "recipes built against as the archive's binaries (cycles cut by 'recipes import')"),
        "needs": (list, False, 'capabilities its worker must have (where it runs, not what it makes): ["kvm"]'),
        "inputs": (
            list,
            False,
            "files the build reads at $INPUTS/<path>, relative to the recipe's directory or a parent, "
            'e.g. inputs = ["mangos.config"]',
        ),
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
        "environment": (
            str,
            False,
            "the pinned build environment (envs/NAME.toml) of a debian build, or a script build's /usr instead of "
            'the host\'s, e.g. "bookworm-amd64"',
        ),
        "archive": (list, False, "pinned archive packages of a debian build (written by 'recipes import')"),
        "options": (
            list,
            False,
            "DEB_BUILD_OPTIONS of a debian build, each with its reason in a comment beside it (parallel= is the "
            "worker's, never the recipe's), e.g. options = [\"nocheck\"]",
        ),
        "profiles": (list, False, 'build profiles of a debian build (dpkg-buildpackage -P), e.g. profiles = ["nodoc"]'),
        "arch-all": (
            bool,
            False,
            "false: a debian build builds only its architecture's binary packages (dpkg-buildpackage -B, sbuild's "
            "--no-arch-all), none of its Architecture: all ones; with its reason in a comment, e.g. arch-all = false",
        ),
        "buildd": (int, False, "the build-root version a debian build's content records (written by the farm)"),
        "binnmu": (int, False, "a debian build's binNMU number: its binaries are versioned VERSION+bN"),
        "binnmu-message": (str, False, "the binNMU changelog entry's reason, one line (needs build.binnmu)"),
    },
}


PIN_KEYS = ("package", "version", "arch", "sha256")
KINDS = ("script", "debian")


def err(code: str, path: Path, field: str, message: str, hint: str) -> FarmError:
    return RecipeError(code, message, hint=hint, file=path, field=field)


def check_table(table: Mapping[str, Any], schema_name: str, path: Path, errors: list[FarmError]) -> None:
    schema = SCHEMA[schema_name]
    prefix = f"{schema_name}." if schema_name else ""
    for key in table:
        if key not in schema:
            import difflib  # only to name a likely intended key

            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"allowed keys: {', '.join(schema)}"
            errors.append(err(E.RECIPE_UNKNOWN_KEY, path, prefix + key, "unknown key", hint))
    for key, (type_, required, help_) in schema.items():
        if key not in table:
            if required:
                errors.append(err(E.RECIPE_MISSING, path, prefix + key, "missing required field", help_))
            continue
        if not isinstance(table[key], type_):
            got = type(table[key]).__name__
            errors.append(err(E.RECIPE_TYPE, path, prefix + key, f"expected {type_.__name__}, got {got}", help_))


def string_list(value: Any, path: Path, field: str, errors: list[FarmError], example: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        errors.append(err(E.RECIPE_TYPE, path, field, "every entry must be a non-empty string", f"e.g. {example}"))
        return ()
    return tuple(value)


def check_output_path(value: str) -> str | None:
    """Why an output path is unacceptable, or None. Outputs must stay inside $OUT."""
    if value.startswith("/"):
        return "is absolute"
    parts = _parts(value)
    if ".." in parts:
        return "contains '..'"
    if "\\" in value or "\0" in value:
        return "contains a backslash or NUL"
    if not parts:
        return "names the output directory itself"
    return None


def _parts(relative: str) -> list[str]:
    """The components of a relative POSIX path as ``PurePosixPath(relative).parts`` has them (no empty or "."
    components), without building the path object: thousands of recipes are checked per plan."""
    return [c for c in relative.split("/") if c and c != "."]


def check_commit(commit: str, path: Path, errors: list[FarmError]) -> None:
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
    errors.append(err(E.RECIPE_COMMIT, path, "source.commit", msg, hint))


def str_field(table: Mapping[str, Any], key: str, default: str = "") -> str:
    value = table.get(key, default)
    return value if isinstance(value, str) else default


def subtable(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def check_identity(data: Mapping[str, Any], path: Path, errors: list[FarmError]) -> None:
    name = data.get("name")
    if isinstance(name, str) and not NAME_RE.fullmatch(name):
        errors.append(
            err(
                E.RECIPE_VALUE,
                path,
                "name",
                f"'{name}' is not a valid package name",
                "use lowercase letters, digits and + . - (Debian's rule), starting with a letter or digit",
            )
        )
    version = data.get("version")
    if isinstance(version, str) and not version.strip():
        errors.append(err(E.RECIPE_VALUE, path, "version", "must not be empty", 'e.g. version = "1.0"'))


def check_source(source: Mapping[str, Any], path: Path, errors: list[FarmError]) -> None:
    if isinstance(source.get("commit"), str):
        check_commit(source["commit"], path, errors)
    if "git" not in source and "dsc" not in source and source:
        errors.append(
            err(
                E.RECIPE_MISSING,
                path,
                "source.git",
                "missing required field",
                'a git repository (git = "https://...") or a Debian source package (dsc = "hello=2.10-3")',
            )
        )
    elif "git" in source and "dsc" in source:
        errors.append(
            err(E.RECIPE_VALUE, path, "source.dsc", "give source.git or source.dsc, not both", "remove one of them")
        )
    dsc = source.get("dsc")
    if isinstance(dsc, str) and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*=(?:[0-9]+:)?[0-9A-Za-z][0-9A-Za-z.+~-]*", dsc):
        errors.append(
            err(E.RECIPE_VALUE, path, "source.dsc", f"'{dsc}' is not NAME=VERSION", 'e.g. dsc = "hello=2.10-3"')
        )
    git = source.get("git")
    if isinstance(git, str) and not git.strip():
        errors.append(err(E.RECIPE_VALUE, path, "source.git", "must not be empty", SCHEMA["source"]["git"][2]))


def non_empty(
    table: Mapping[str, Any], key: str, field: str, what: str, *, path: Path, errors: list[FarmError]
) -> None:
    if isinstance(table.get(key), list) and not table[key]:
        table_name = field.split(".", maxsplit=1)[0] if "." in field else ""
        errors.append(err(E.RECIPE_VALUE, path, field, f"needs at least {what}", SCHEMA[table_name][key][2]))


def check_depends(depends: tuple[str, ...], name: str, path: Path, errors: list[FarmError]) -> None:
    if name in depends:
        errors.append(err(E.RECIPE_CYCLE, path, "build-depends", f"'{name}' depends on itself", "remove it"))
    if len(set(depends)) != len(depends):
        errors.append(err(E.RECIPE_VALUE, path, "build-depends", "lists a recipe twice", "list each dependency once"))


def check_outputs(outputs: tuple[str, ...], path: Path, errors: list[FarmError]) -> None:
    for out in outputs:
        why = check_output_path(out)
        if why:
            errors.append(
                err(
                    E.RECIPE_OUTPUT_PATH,
                    path,
                    "outputs",
                    f"'{out}' {why}: outputs must stay inside the output directory",
                    "write a path relative to $OUT, e.g. 'bin/hello'",
                )
            )
    names = [(_parts(o) or [""])[-1] for o in outputs]
    if len(set(names)) != len(names):
        errors.append(
            err(
                E.RECIPE_OUTPUT_PATH,
                path,
                "outputs",
                "two outputs share a file name; artifacts are named by it",
                "publish a common parent directory instead",
            )
        )


def parse_env(build: Mapping[str, Any], path: Path, errors: list[FarmError]) -> tuple[tuple[str, str], ...]:
    env = build.get("env")
    items: list[tuple[str, str]] = []
    for key, value in env.items() if isinstance(env, dict) else ():
        if not ENV_NAME_RE.fullmatch(key) or key in RESERVED_ENV or not isinstance(value, str):
            errors.append(
                err(
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


def parse_debian(
    build: Mapping[str, Any], path: Path, errors: list[FarmError], *, present: bool
) -> tuple[str, str, tuple[Any, ...]]:
    """kind, environment and archive pins; the debian kind needs an environment and runs dpkg-buildpackage."""
    kind = build.get("kind", "script")
    if kind not in KINDS:
        errors.append(err(E.RECIPE_VALUE, path, "build.kind", f"unknown kind '{kind}'", f"use one of {KINDS}"))
        return "script", "", ()
    environment = build.get("environment", "")
    if kind == "debian" and not environment:
        errors.append(
            err(
                E.RECIPE_MISSING,
                path,
                "build.environment",
                "a debian build needs one",
                SCHEMA["build"]["environment"][2],
            )
        )
    if kind == "script" and "archive" in build:
        errors.append(
            err(
                E.RECIPE_VALUE,
                path,
                "build.kind",
                'archive pins need kind = "debian" (a script build uses its environment as it is)',
                'add kind = "debian", or put the packages into the environment (envs/NAME.toml packages)',
            )
        )
    pins = []
    for i, pin in enumerate(build.get("archive", []) if isinstance(build.get("archive"), list) else []):
        ok = isinstance(pin, dict) and set(pin) == set(PIN_KEYS) and all(isinstance(v, str) for v in pin.values())
        if not ok or not re.fullmatch(r"[0-9a-f]{64}", str(pin.get("sha256", ""))):
            errors.append(
                err(
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
        errors.append(err(E.RECIPE_MISSING, path, "build.steps", "missing required field", SCHEMA["build"]["steps"][2]))
    return kind, environment if isinstance(environment, str) else "", tuple(pins)


OPTION_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*(?:=[^\s=]+)?$")
PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def parse_build_flags(
    build: Mapping[str, Any], kind: str, buildd: int, path: Path, errors: list[FarmError]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A debian build's DEB_BUILD_OPTIONS words and build profiles, in the order written. ``parallel=`` is refused:
    it is the worker's (its cores), so a bigger machine changes no build key. ``build.buildd``, when present (a
    recipe's content as a worker receives it), must be this farm's ``buildd`` version."""
    options = string_list(build.get("options", []), path, "build.options", errors, '["nocheck"]')
    profiles = string_list(build.get("profiles", []), path, "build.profiles", errors, '["nodoc"]')
    if kind != "debian":
        for key in ("options", "profiles", "buildd"):
            if key in build:
                errors.append(
                    err(E.RECIPE_VALUE, path, f"build.{key}", "only a debian build has one", 'add kind = "debian"')
                )
        return (), ()
    for field, values, pattern in (("options", options, OPTION_RE), ("profiles", profiles, PROFILE_RE)):
        bad = [v for v in values if not pattern.fullmatch(v)]
        if bad:
            errors.append(
                err(E.RECIPE_VALUE, path, f"build.{field}", f"'{bad[0]}' is malformed", SCHEMA["build"][field][2])
            )
        if len(set(values)) != len(values):
            errors.append(err(E.RECIPE_VALUE, path, f"build.{field}", "lists a value twice", "list each once"))
    if any(o.split("=", 1)[0] == "parallel" for o in options):
        errors.append(
            err(
                E.RECIPE_VALUE,
                path,
                "build.options",
                "parallel= is set by the worker (its cores), not by the recipe",
                "remove it: the build key must not depend on the machine; a worker passes parallel=N itself",
            )
        )
    if "buildd" in build and build["buildd"] != buildd:
        errors.append(
            err(
                E.RECIPE_VALUE,
                path,
                "build.buildd",
                f"build root version {build['buildd']!r}, this farm makes version {buildd}",
                "plan and build with the same farm version (or remove the key from a recipe file)",
            )
        )
    return options, profiles


def parse_arch_all(build: Mapping[str, Any], kind: str, path: Path, errors: list[FarmError]) -> bool:
    """Whether a debian build builds its Architecture: all packages too (``build.arch-all``, default true)."""
    value = build.get("arch-all", True)
    if not isinstance(value, bool):  # the table's check says so (E-RECIPE-TYPE)
        return True
    if kind != "debian" and "arch-all" in build:
        errors.append(err(E.RECIPE_VALUE, path, "build.arch-all", "only a debian build has one", 'add kind = "debian"'))
        return True
    return value
