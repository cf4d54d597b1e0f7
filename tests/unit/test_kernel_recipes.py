"""The kernel recipes (recipes/kernel/): the compile does not depend on the organization's certificate, the image
with the certificate does; both build in the pinned bookworm-kernel environment from the same imported source; the
set is built only when named. Keys are computed as planning computes them; nothing is compiled or imported."""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from farm.cli.artifacts import cmd_fetch
from farm.coordinator.plan import Decision, compute_key, make_plan
from farm.envs.host import Environment
from farm.errors import E, FarmError
from farm.recipes import Recipe, load_dir
from farm.recipes.load import SEPARATE_SET
from farm.settings import Settings
from farm.sources.git import ResolvedSource
from farm.store import Artifact, BuildRecord, open_store

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
KERNEL = REPO / "recipes" / "kernel"
ENV = "e" * 64  # the bookworm-kernel environment's digest, as planning would read it from the store
HOST = Environment("host", "h" * 64, {})
# What linux-mangos's build published (stand-ins: the image recipe's key depends on them, not on their content).
COMPILED = {"kbuild.tar": "1" * 64, "kernel.config": "2" * 64}


def certificate(common_name: str) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2024, 1, 1))
        .not_valid_after(datetime(2034, 1, 1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def organization(root: Path, cert: bytes) -> Path:
    """The repository's kernel recipes laid out under ``root`` as in the checkout, with ``cert`` as this
    organization's certificate. Returns the recipes directory."""
    recipes = root / "recipes" / "kernel"
    shutil.copytree(KERNEL, recipes, ignore=shutil.ignore_patterns("organization.crt"))
    (recipes / "organization.crt").write_bytes(cert)
    (root / "farm" / "build").mkdir(parents=True)
    shutil.copy(REPO / "farm" / "build" / "kconfig.py", root / "farm" / "build" / "kconfig.py")
    return recipes


def resolve(recipe: Recipe) -> ResolvedSource:
    return ResolvedSource(recipe.git_location, recipe.source.commit, "f" * 40, 1788809622)


def keys(root: Path, cert: bytes) -> tuple[str, str]:
    """(linux-mangos's build key, linux-image-mangos's build key) for an organization with ``cert``."""
    recipes = load_dir(organization(root, cert))
    plan = make_plan(recipes, open_store(str(root / "store")), resolve, HOST, env_for=lambda r: ENV)
    compiled, image = plan.builds["linux-mangos"], plan.builds["linux-image-mangos"]
    assert compiled.decision is Decision.BUILD and compiled.key is not None
    assert image.key is None, "the image's key is known once the compiled kernel is"
    image_key = compute_key(image.recipe, image.source, image.environment, {"linux-mangos": COMPILED})
    return compiled.key, image_key


def test_a_new_certificate_changes_the_image_recipe_key_and_not_the_compiled_kernel(tmp_path: Path) -> None:
    compiled_a, image_a = keys(tmp_path / "a", certificate("Organization A verity"))
    compiled_b, image_b = keys(tmp_path / "b", certificate("Organization B verity"))
    assert compiled_a == compiled_b
    assert image_a != image_b


def test_the_kernel_configuration_is_part_of_the_compiled_kernel_key(tmp_path: Path) -> None:
    cert = certificate("Organization A verity")
    compiled, _ = keys(tmp_path / "a", cert)
    root = tmp_path / "b"
    recipes = organization(root, cert)
    fragment = recipes / "mangos.config"
    fragment.write_text(fragment.read_text() + "\n# Another option, for this test.\nCONFIG_PRINTK_TIME=y\n")
    plan = make_plan(load_dir(recipes), open_store(str(root / "store")), resolve, HOST, env_for=lambda r: ENV)
    assert plan.builds["linux-mangos"].key not in (None, compiled)


def test_both_recipes_build_the_same_imported_source_in_the_pinned_environment(tmp_path: Path) -> None:
    recipes = load_dir(organization(tmp_path, certificate("Organization A verity"))).recipes
    compiled, image = recipes["linux-mangos"], recipes["linux-image-mangos"]
    assert image.build_depends == ("linux-mangos",) and compiled.build_depends == ()
    assert compiled.source == image.source and compiled.source.dsc.startswith("linux=6.1.")
    assert compiled.environment == image.environment == "bookworm-kernel"
    assert [i.file for i in compiled.inputs] == ["mangos.config", "farm/build/kconfig.py"]
    assert "organization.crt" in [i.file for i in image.inputs]
    assert compiled.version == image.version == compiled.source.dsc.partition("=")[2]
    plan = make_plan(load_dir(tmp_path / "recipes" / "kernel"), open_store(str(tmp_path / "s")), resolve, HOST)
    assert plan.builds["linux-mangos"].environment == HOST.digest, "without env_for nothing is pinned"
    plan = make_plan(
        load_dir(tmp_path / "recipes" / "kernel"), open_store(str(tmp_path / "s")), resolve, HOST, env_for=lambda r: ENV
    )
    assert plan.builds["linux-mangos"].environment == ENV


def test_the_kernel_set_is_built_when_named_and_left_out_of_its_parent(tmp_path: Path) -> None:
    assert (KERNEL / SEPARATE_SET).is_file()
    parent = load_dir(REPO / "recipes").recipes
    assert "linux-mangos" not in parent and "greet" in parent and "hello" in parent
    organization(tmp_path, certificate("Organization A verity"))
    (tmp_path / "recipes" / "other.toml").write_text((REPO / "recipes" / "libgreet.toml").read_text())
    assert sorted(load_dir(tmp_path / "recipes").recipes) == ["libgreet"]
    assert sorted(load_dir(tmp_path / "recipes" / "kernel").recipes) == ["linux-image-mangos", "linux-mangos"]
    (tmp_path / "recipes" / "kernel" / SEPARATE_SET).unlink()
    assert sorted(load_dir(tmp_path / "recipes").recipes) == ["libgreet", "linux-image-mangos", "linux-mangos"]


def image_record(key: str, vmlinuz: str) -> BuildRecord:
    return BuildRecord(
        build_key=key,
        recipe="linux-image-mangos",
        version="6.1.187-1",
        recipe_digest="d" * 64,
        source_url="dsc:linux=6.1.187-1",
        commit="c" * 40,
        tree="f" * 40,
        environment=ENV,
        artifacts=(Artifact("vmlinuz", vmlinuz, 1),),
        provenance="0" * 64,
        log="0" * 64,
        builder="test",
        started="",
        finished="",
    )


def test_fetch_takes_the_image_of_one_certificate_by_build_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store holds one kernel image per certificate it was built with, all from the same commit."""
    records = [image_record("a" * 64, "1" * 64), image_record("b" * 64, "2" * 64)]
    monkeypatch.setattr("farm.trust.fetch.records_for", lambda store, commit, recipe: records)
    settings = Settings(home=tmp_path)
    args = argparse.Namespace(commit="c" * 40, recipe=None, build_key="b" * 64, output=None, key=None, json=True)
    assert cmd_fetch(args, settings) == 0
    assert [row["build_key"] for row in json.loads(capsys.readouterr().out)] == ["b" * 64]
    args.build_key = "e" * 64
    with pytest.raises(FarmError) as info:
        cmd_fetch(args, settings)
    assert info.value.code == E.FETCH_NOTHING and info.value.field == "--build-key"
    args.build_key = None
    assert cmd_fetch(args, settings) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
