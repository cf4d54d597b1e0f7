"""A release channel: what ``image publish`` writes and what an updater or installer trusts from it.

Layout of a channel (a directory, an S3 prefix, or the same served over HTTP(S))::

    channel.json                   the index: format, releases in publishing order, the current signer
    V/mangos_V.root.raw            root data (erofs), as in the image's root partition
    V/mangos_V.verity.raw          its dm-verity hash tree
    V/mangos_V.verity-sig.raw      its verity signature partition (DPS JSON + PKCS#7)
    V/mangos_V.efi                 the signed UKI
    V/mangos_V.disk.raw            the image's other allocated bytes (GPT, ESP), packed (:mod:`farm.image.bmap`)
    V/mangos_V.bmap.json           the block map of mangos_V.raw: every allocated range, its sha256 and its file
    V/next-release.crt             optional: the key that signs the next releases, announced by this one
    V/SHA256SUMS                   sha256 of every file above
    V/SHA256SUMS.p7s               detached DER PKCS#7 over SHA256SUMS by the release (verity) key

A release directory is immutable (never rewritten; republishing a version is refused), and channel.json is written
after it, so a reader never sees a release whose files are not all there. channel.json is not signed: everything a
verifier acts on comes from a SHA256SUMS whose signature it checked (an OpenPGP ``SHA256SUMS.gpg`` can sit beside
the PKCS#7 one for systemd-sysupdate without changing anything else).

Key rotation: a release lists ``next-release.crt`` in its signed SHA256SUMS. A verifier that trusts the signer of
that release then trusts the announced key too; once it accepts a release signed by the announced key, the keys
before it are retired. A release signed by a key the verifier was never told of is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from farm.errors import E, FarmError, TrustError
from farm.image.channelfiles import CHANNEL, NEXT_KEY, SUMS, SUMS_SIG, check_version, parse_sums
from farm.image.signature import SHA256_OID, signer_info
from farm.trust.release_keys import fingerprint

FORMAT = 1

ROOT, VERITY, VERITY_SIG, UKI, DISK, BMAP = "root", "verity", "verity-sig", "efi", "disk", "bmap"


def file_name(version: str, kind: str) -> str:
    """The sysupdate-style name of a release file: ``mangos_V.root.raw``, ``mangos_V.efi``, ``mangos_V.bmap.json``."""
    suffix = {UKI: ".efi", BMAP: ".bmap.json"}.get(kind, f".{kind}.raw")
    return f"mangos_{check_version(version)}{suffix}"


def verifies(data: bytes, der: bytes, cert: x509.Certificate) -> bool:
    """Whether ``der`` (a detached PKCS#7 without signed attributes, as ``openssl smime -noattr`` makes it) is
    ``cert``'s RSA/SHA-256 signature of ``data``."""
    try:
        info = signer_info(der)
    except FarmError:
        return False
    public = cert.public_key()
    if info.digest_oid != SHA256_OID or not isinstance(public, rsa.RSAPublicKey):
        return False
    try:
        public.verify(info.signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Release:
    version: str
    files: tuple[FileEntry, ...]
    signer: str  # fingerprint of the certificate whose key signed SHA256SUMS
    next_key: str | None = None  # fingerprint of the announced next key

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": f"{self.version}/",
            "signer": self.signer,
            "next_key": self.next_key,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Release:
        files = tuple(FileEntry(str(f["name"]), str(f["sha256"]), int(f["size"])) for f in doc["files"])
        return cls(check_version(str(doc["version"])), files, str(doc["signer"]), doc.get("next_key"))


@dataclass
class Channel:
    """channel.json: the releases in publishing order and the fingerprint of the key that signs new ones."""

    releases: list[Release] = field(default_factory=list)
    certificate: str = ""

    def versions(self) -> list[str]:
        return [r.version for r in self.releases]

    def release(self, version: str) -> Release:
        for r in self.releases:
            if r.version == version:
                return r
        raise FarmError(E.CHANNEL_INVALID, f"the channel has no release {version}", hint=f"it has {self.versions()}")

    def add(self, release: Release, url: str) -> None:
        if release.version in self.versions():
            raise FarmError(
                E.RELEASE_EXISTS,
                f"release {release.version} is already published in {url}",
                hint="a published release is never replaced: build again with a new --image-version",
            )
        self.releases.append(release)
        self.certificate = release.signer

    def dumps(self) -> bytes:
        doc = {
            "format": FORMAT,
            "certificate_fingerprint": self.certificate,
            "releases": [r.to_json() for r in self.releases],
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes | None) -> Channel:
        if data is None:
            return cls()
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}; this farm reads format {FORMAT}")
            return cls([Release.from_json(r) for r in doc["releases"]], str(doc["certificate_fingerprint"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FarmError(
                E.CHANNEL_INVALID, f"unreadable {CHANNEL}: {exc}", hint="restore it from the release directories"
            ) from None


@dataclass
class Trust:
    """The certificates a verifier trusts, in generations: the ones it was given, then each announced key."""

    generations: list[list[x509.Certificate]]

    def certificates(self) -> list[x509.Certificate]:
        return [c for g in self.generations for c in g]

    def signer(self, data: bytes, der: bytes) -> tuple[int, x509.Certificate] | None:
        for i, generation in enumerate(self.generations):
            for cert in generation:
                if verifies(data, der, cert):
                    return i, cert
        return None

    def accept(self, generation: int) -> None:
        """A release signed by a key of ``generation`` was accepted: the generations before it are retired."""
        del self.generations[:generation]

    def announce(self, cert: x509.Certificate) -> None:
        if fingerprint(cert) not in {fingerprint(c) for c in self.certificates()}:
            self.generations.append([cert])


@dataclass(frozen=True)
class Verified:
    """A release whose SHA256SUMS signature verified: its files' digests (the only ones to trust), its signer,
    and the certificates to trust from now on (to keep for the next update)."""

    version: str
    digests: dict[str, str]
    signer: str
    trusted: tuple[x509.Certificate, ...]


Fetch = Callable[[str], bytes]


def verify_release(fetch: Fetch, trusted: Sequence[x509.Certificate], version: str | None = None) -> Verified:
    """Verify release ``version`` (default the newest) of the channel read by ``fetch`` (path -> bytes), trusting
    ``trusted`` and the keys announced by releases it verifies on the way, in publishing order.

    Raises E-CHANNEL-UNTRUSTED when its SHA256SUMS is not signed by a trusted key, E-CHANNEL-INVALID when the
    channel is malformed or its signed SHA256SUMS is not that release's."""
    channel = Channel.loads(fetch(CHANNEL))
    if not channel.releases:
        raise FarmError(E.CHANNEL_INVALID, "the channel has no releases", hint="publish one with image publish")
    target = channel.release(version).version if version else channel.releases[-1].version
    trust = Trust([list(trusted)])
    for rel in channel.releases:
        sums = fetch(f"{rel.version}/{SUMS}")
        found = trust.signer(sums, fetch(f"{rel.version}/{SUMS_SIG}"))
        if found is None:
            if rel.version == target:
                raise TrustError(
                    E.CHANNEL_UNTRUSTED,
                    f"release {target}: SHA256SUMS is not signed by a key this machine trusts "
                    f"(trusted: {', '.join(fingerprint(c)[:16] for c in trust.certificates())})",
                    hint="a new release key must be announced by a release signed with the old one "
                    "(image publish --next-key); nothing was written",
                )
            continue  # signed by a key not (yet) trusted: nothing can be learned from it
        generation, cert = found
        digests = parse_sums(sums)
        if not any(n.startswith(f"mangos_{rel.version}.") for n in digests) or any(
            n.startswith("mangos_") and not n.startswith(f"mangos_{rel.version}.") for n in digests
        ):
            raise FarmError(
                E.CHANNEL_INVALID,
                f"the signed SHA256SUMS in {rel.version}/ lists another release's files",
                hint="a release directory holds only its own files",
            )
        trust.accept(generation)
        if NEXT_KEY in digests:
            pem = fetch(f"{rel.version}/{NEXT_KEY}")
            if hashlib.sha256(pem).hexdigest() != digests[NEXT_KEY]:
                raise FarmError(
                    E.CHANNEL_INVALID, f"{rel.version}/{NEXT_KEY} does not match its signed digest", hint="republish"
                )
            trust.announce(x509.load_pem_x509_certificate(pem))
        if rel.version == target:
            return Verified(target, digests, fingerprint(cert), tuple(trust.certificates()))
    raise AssertionError("unreachable: the target is one of the releases")  # pragma: no cover
