"""Ed25519 PEM without the crypto library (farm.trust.pem), checked against the library and OpenSSL, and the
cheap key check ``rebuild`` makes (farm.trust.keys.check_builder)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from farm.errors import E, TrustError
from farm.trust import pem
from farm.trust.keys import PRIVATE_NAME, PUBLIC_NAME, check_builder, generate, load_public
from tests.conftest import require

pytestmark = pytest.mark.unit
SPKI = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_public_key_bytes_as_the_library_and_openssl_read_them(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    text = key.public_bytes(*SPKI)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pem.public_der(text) == der
    assert pem.public_pem(der) == text  # byte for byte what the library (and so `keys generate`) writes
    (tmp_path / "k.pem").write_bytes(pem.public_pem(der))
    out = subprocess.run(
        [require("openssl"), "pkey", "-pubin", "-in", str(tmp_path / "k.pem"), "-outform", "DER"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert out == der


def test_anything_but_an_ed25519_public_key_is_not_read() -> None:
    ed = Ed25519PrivateKey.generate()
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    good = ed.public_key().public_bytes(*SPKI)
    assert pem.public_der(other.public_bytes(*SPKI)) is None
    assert pem.public_der(good.replace(b"PUBLIC KEY", b"PRIVATE KEY")) is None
    assert pem.public_der(good[:40] + b"!" + good[41:]) is None  # not base64
    assert pem.public_der(good + good) is None  # two blocks
    assert pem.public_der(b"") is None


def test_the_private_key_form_is_what_generate_writes(tmp_path: Path) -> None:
    generate(tmp_path)
    written = (tmp_path / PRIVATE_NAME).read_bytes()
    assert pem.is_private(written)
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    assert not pem.is_private(encrypted)
    assert not pem.is_private((tmp_path / PUBLIC_NAME).read_bytes())


def test_load_public_gives_the_key_the_library_would(tmp_path: Path) -> None:
    builder = generate(tmp_path)
    loaded = load_public(tmp_path / PUBLIC_NAME)
    assert loaded.keyid == builder.public.keyid and loaded.der == builder.public.der
    signature = builder.sign(b"data")
    assert loaded.verify(signature, b"data") and not loaded.verify(signature, b"other")
    wrapped = tmp_path / "wrapped.pem"  # valid PEM in another line layout: the library reads it
    body = (tmp_path / PUBLIC_NAME).read_bytes().splitlines()
    wrapped.write_bytes(b"\n".join([body[0], body[1][:30], body[1][30:], body[2]]) + b"\n")
    assert load_public(wrapped).keyid == builder.public.keyid
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (tmp_path / "rsa.pem").write_bytes(rsa_key.public_bytes(*SPKI))
    with pytest.raises(TrustError) as info:
        load_public(tmp_path / "rsa.pem")
    assert info.value.code == E.KEY_INVALID and "Ed25519" in info.value.message


def test_check_builder_refuses_what_load_builder_refuses(tmp_path: Path) -> None:
    with pytest.raises(TrustError) as missing:
        check_builder(tmp_path)
    assert missing.value.code == E.KEY_MISSING and "keys generate" in (missing.value.hint or "")
    generate(tmp_path)
    check_builder(tmp_path)
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / PRIVATE_NAME).write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(TrustError) as wrong:
        check_builder(tmp_path)
    assert wrong.value.code == E.KEY_INVALID and "not an Ed25519 key" in wrong.value.message
    (tmp_path / PRIVATE_NAME).write_bytes(b"garbage\n")
    with pytest.raises(TrustError) as garbage:
        check_builder(tmp_path)
    assert garbage.value.code == E.KEY_INVALID
