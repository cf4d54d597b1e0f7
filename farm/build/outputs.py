"""A build's declared outputs, collected from $OUT: glob patterns expanded, directories packed into reproducible
tars, files copied with their mode. Every output must be a real file or directory under $OUT (no symlinks, nothing
resolving outside it). Each file is hashed as it is written, so storing it reads it once."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from farm.build import BuildFailure
from farm.errors import E
from farm.pack import check_tree_entry, copy_hashed, pack_dir
from farm.recipes import Recipe


class Output(NamedTuple):
    """An output file ready to store, with the sha256 and size of its bytes as written."""

    path: Path
    sha256: str
    size: int


def _output_error(recipe: Recipe, message: str, hint: str) -> BuildFailure:
    return BuildFailure(E.BUILD_OUTPUT, message, file=recipe.path, field="outputs", hint=hint)


def expand_outputs(recipe: Recipe, out: Path) -> list[str]:
    """Declared outputs, with glob patterns (``*.deb``) expanded against what the build produced."""
    found: list[str] = []
    for rel in recipe.outputs:
        if not any(c in rel for c in "*?["):
            found.append(rel)
            continue
        matches = sorted(p.relative_to(out).as_posix() for p in out.glob(rel))
        if not matches:
            raise _output_error(
                recipe,
                f"declared output pattern '{rel}' matched nothing",
                "make the build write such files under $OUT, or fix the pattern",
            )
        found.extend(matches)
    return found


def collect_outputs(recipe: Recipe, out: Path, dest: Path, mtime: int) -> list[Output]:
    """The outputs as files under ``dest``, ready to store: a directory becomes ``<name>.tar``, its entries at
    ``mtime``."""
    files = []
    for rel in expand_outputs(recipe, out):
        path = out / rel
        if not path.exists() and not path.is_symlink():
            raise _output_error(
                recipe,
                f"declared output '{rel}' was not produced",
                "make the build write it under $OUT, or fix the path in outputs",
            )
        real = path.resolve()
        if out.resolve() not in real.parents and real != out.resolve():
            raise _output_error(
                recipe,
                f"declared output '{rel}' resolves outside the output directory",
                "outputs must be real files or directories under $OUT",
            )
        if path.is_dir() and not path.is_symlink():
            target = dest / f"{path.name}.tar"
            digest = pack_dir(path, target, mtime)
        else:
            check_tree_entry(out, path, rel)
            if path.is_symlink():
                raise _output_error(
                    recipe, f"declared output '{rel}' is a symlink", "declare the file it points to instead"
                )
            target = dest / path.name
            digest = copy_hashed(path, target)
        files.append(Output(target, digest, target.stat().st_size))
    return files
