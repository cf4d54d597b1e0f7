"""Ed25519 keys in PEM, read and written without a crypto library: the fixed DER of RFC 8410.

An Ed25519 public key's SubjectPublicKeyInfo is always 44 bytes, a 12-byte header and the 32-byte key; its private
key in PKCS#8 is 48 bytes, a 16-byte header and the 32-byte seed. So a key id (the sha256 of the SPKI DER) and the
check that a key file holds such a key need only base64, which keeps the cryptography library (tens of ms to
import) out of commands that never sign or verify. Anything else (another key type, a PEM with parameters or a
public key inside a private one) is not recognised here, and the caller asks the crypto library, which decides.
"""

from __future__ import annotations

import base64
import binascii

SPKI_HEADER = bytes.fromhex("302a300506032b6570032100")  # SEQUENCE { AlgorithmIdentifier ed25519, BIT STRING 32 }
PKCS8_HEADER = bytes.fromhex("302e020100300506032b657004220420")  # version 0, ed25519, OCTET STRING { OCTET 32 }
KEY_BYTES = 32


def _body(pem: bytes, label: str) -> bytes | None:
    """The DER inside one ``-----BEGIN label-----`` block that is all the file holds; None if it is not that."""
    lines = pem.strip().splitlines()
    if len(lines) < 3 or lines[0] != b"-----BEGIN " + label.encode() + b"-----":
        return None
    if lines[-1] != b"-----END " + label.encode() + b"-----":
        return None
    try:
        return base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except binascii.Error:
        return None


def public_der(pem: bytes) -> bytes | None:
    """The SPKI DER of an Ed25519 public key in PEM; None when ``pem`` is not exactly that."""
    der = _body(pem, "PUBLIC KEY")
    return der if der is not None and len(der) == len(SPKI_HEADER) + KEY_BYTES and der.startswith(SPKI_HEADER) else None


def is_private(pem: bytes) -> bool:
    """Whether ``pem`` is an unencrypted PKCS#8 Ed25519 private key (what ``keys generate`` writes)."""
    der = _body(pem, "PRIVATE KEY")
    return der is not None and len(der) == len(PKCS8_HEADER) + KEY_BYTES and der.startswith(PKCS8_HEADER)


def public_pem(der: bytes) -> bytes:
    """``der`` as a PEM public key, with the line breaks OpenSSL and cryptography write (64 characters)."""
    text = base64.b64encode(der)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"
