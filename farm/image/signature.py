"""The verity signature partition of the Discoverable Partitions Specification.

JSON ``{"rootHash", "certificateFingerprint", "signature"}`` where ``signature`` is base64 DER PKCS#7 (detached, no
signed attributes, the signer's certificate included) over the root hash as a lowercase hex string, NUL-padded to
4096 bytes. This is what systemd-dissect and the kernel's ``dm-verity.require_signatures`` path read; ``openssl cms
-verify -binary -inform DER -content roothash.txt`` checks it. No signing time is embedded, so the bytes are
reproducible (RSA PKCS#1 v1.5 signatures are deterministic).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from farm.errors import E, FarmError, TrustError
from farm.identity import canonical_json
from farm.trust.release_keys import fingerprint

PARTITION_SIZE = 4096


def sign_root_hash(root_hash: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    """DER PKCS#7 detached signature over the hex root hash (what ``openssl smime -sign -binary -noattr`` makes)."""
    options = [
        pkcs7.PKCS7Options.DetachedSignature,
        pkcs7.PKCS7Options.NoAttributes,
        pkcs7.PKCS7Options.Binary,
    ]
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(root_hash.encode())
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )


def partition_bytes(root_hash: str, der: bytes, cert: x509.Certificate) -> bytes:
    doc = {
        "rootHash": root_hash,
        "certificateFingerprint": fingerprint(cert),
        "signature": base64.b64encode(der).decode(),
    }
    body = canonical_json(doc) + b"\n"
    if len(body) > PARTITION_SIZE:
        raise FarmError(E.IMAGE_BUILD, f"signature JSON is {len(body)} bytes, more than {PARTITION_SIZE}")
    return body + b"\0" * (PARTITION_SIZE - len(body))


def parse_partition(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.rstrip(b"\0"))
    except ValueError as exc:
        raise FarmError(
            E.IMAGE_VERIFY, f"the signature partition is not JSON: {exc}", hint="the image is damaged"
        ) from None
    if not isinstance(doc, dict) or not {"rootHash", "signature"} <= set(doc):
        raise FarmError(E.IMAGE_VERIFY, "the signature partition lacks rootHash/signature", hint="rebuild the image")
    return doc


@dataclass(frozen=True)
class SignerInfo:
    """The parts of a PKCS#7 SignedData we check: the signature value and its digest algorithm."""

    signature: bytes
    digest_oid: str


def _der_items(data: bytes, pos: int = 0) -> list[tuple[int, int, int, int]]:
    """(tag, header start, content start, end) of each DER item in ``data[pos:]`` (one level)."""
    items = []
    while pos < len(data):
        tag = data[pos]
        length = data[pos + 1]
        start = pos + 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[start : start + n], "big")
            start += n
        items.append((tag, pos, start, start + length))
        pos = start + length
    return items


def _children(data: bytes, item: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    return _der_items(data[: item[3]], item[2])


def _oid(data: bytes) -> str:
    first = data[0]
    parts = [first // 40, first % 40]
    value = 0
    for b in data[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def signer_info(der: bytes) -> SignerInfo:
    """Read the single SignerInfo of a DER PKCS#7 SignedData (no signed attributes, as we make them)."""
    try:
        content_info = _der_items(der)[0]
        explicit = _children(der, content_info)[1]
        signed_data = _children(der, explicit)[0]
        fields = _children(der, signed_data)
        signer_set = fields[-1]
        info = _children(der, signer_set)[0]
        parts = _children(der, info)
        digest_alg = _children(der, parts[2])[0]
        if len(parts) != 5 or parts[3][0] != 0x30:  # with signed attributes ([0] IMPLICIT) the layout differs
            raise ValueError("unexpected SignerInfo layout")
        sig = parts[4]
        return SignerInfo(der[sig[2] : sig[3]], _oid(der[digest_alg[2] : digest_alg[3]]))
    except (IndexError, ValueError) as exc:
        raise FarmError(
            E.IMAGE_VERIFY, f"cannot read the PKCS#7 signature: {exc}", hint="the image is damaged"
        ) from None


SHA256_OID = "2.16.840.1.101.3.4.2.1"


def verify_root_hash(root_hash: str, der: bytes, cert: x509.Certificate) -> None:
    """Check a detached PKCS#7 (no signed attributes) over ``root_hash`` with ``cert``'s RSA key."""
    info = signer_info(der)
    if info.digest_oid != SHA256_OID:
        raise FarmError(E.IMAGE_VERIFY, f"signature digest {info.digest_oid} is not sha256", hint="re-sign the image")
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise TrustError(E.RELEASE_KEY, "the certificate's key is not RSA", hint="pass the release verity.crt")
    try:
        public.verify(info.signature, root_hash.encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise FarmError(
            E.IMAGE_VERIFY,
            "the root hash signature does not verify with this certificate",
            hint="the image was signed with another key, or its root hash was altered",
        ) from None


def write_partition(path: Path, root_hash: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    der = sign_root_hash(root_hash, key, cert)
    data = partition_bytes(root_hash, der, cert)
    path.write_bytes(data)
    return der
