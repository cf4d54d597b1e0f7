"""A farm-built .deb that no build has seen: the archive's ``hello`` with a new version and one file more.

Signed by a home's builder key with an in-toto statement beside it, as ``image build --deb`` takes it: the image
build then has exactly one package changed (``bench_image``'s warm build, the tree-cache tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

SDE = "1700000000"


def variant_deb(home: Path, dest: Path, tag: str) -> Path:
    """The archive's ``hello`` as a farm build no image has had yet: version ``+benchTAG``, one file more."""
    from farm.trust.keys import load_builder
    from farm.trust.provenance import sign, statement
    from farm.trust.verify import ENVELOPE_SUFFIX, file_sha256

    archive = dest / "archive"
    if not archive.is_dir():
        archive.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "hello"], cwd=archive, check=True, capture_output=True)
    (orig,) = archive.glob("hello_*.deb")
    tree = dest / f"tree-{tag}"
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-R", str(orig), str(tree)], check=True, capture_output=True)
    control = (tree / "DEBIAN/control").read_text().splitlines()
    version = next(line.split(": ", 1)[1] for line in control if line.startswith("Version: ")) + f"+bench{tag}"
    (tree / "DEBIAN/control").write_text(
        "\n".join(f"Version: {version}" if line.startswith("Version: ") else line for line in control) + "\n"
    )
    (tree / "usr/share/hello").mkdir(parents=True, exist_ok=True)
    (tree / "usr/share/hello/bench-variant").write_text(f"{tag}\n")
    deb = dest / f"hello_{version.split(':')[-1]}_amd64.deb"
    env = {"SOURCE_DATE_EPOCH": SDE, "PATH": "/usr/bin:/bin"}
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True, env=env)  # fmt: skip
    stmt = statement(
        subjects=[(deb.name, file_sha256(deb))], recipe={"name": "hello"}, recipe_digest="0" * 64,
        source_url="dsc:hello", commit="0" * 40, tree="0" * 40, environment="0" * 64, dependencies=[],
        builder_id="bench-image", build_key="b" * 64, started="2023-11-14T22:13:20Z", finished="2023-11-14T22:13:21Z",
    )  # fmt: skip
    (dest / (deb.name + ENVELOPE_SUFFIX)).write_text(json.dumps(sign(stmt, load_builder(home / "keys"))))
    return deb
