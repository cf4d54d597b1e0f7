"""``image verify``: check a MANGOS disk image from its bytes, trusting only the release certificate(s).

Reads the GPT, recomputes the dm-verity tree of root A in pure Python (not with the tool that made it) and
compares it with the signed root hash, checks the PKCS#7 signature with the verity certificate, checks that the
partition UUIDs derive from that hash, and that the UKI on the ESP carries the same hash on its (signed) command
line, with ``sbverify`` checking the UKI's Secure Boot signature when the db certificate is given.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.image import gpt, signature, verity
from farm.run import require_tool, run
from farm.trust.release_keys import fingerprint, load_cert

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Report:
    image: Path
    root_hash: str = ""
    uki_sha256: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "ok": self.ok,
            "root_hash": self.root_hash,
            "uki_sha256": self.uki_sha256,
            "checks": [c.to_json() for c in self.checks],
        }


def _find(table: list[gpt.TableEntry], type_: str) -> gpt.TableEntry:
    live = [e for e in table if e.type == type_ and e.name != gpt.EMPTY_LABEL]
    if len(live) != 1:
        raise FarmError(
            E.IMAGE_VERIFY,
            f"expected one live partition of type {type_}, found {len(live)}",
            hint="is this a MANGOS image?",
        )
    return live[0]


def tree_root_hash(data_path: Path, entry: gpt.TableEntry, hash_data: bytes) -> tuple[str, dict[str, Any]]:
    sb = verity.read_superblock(hash_data)
    blocks = int(sb["data_blocks"])
    if blocks * verity.BLOCK > entry.size:
        return "", sb  # the superblock claims more data than the partition holds
    with data_path.open("rb") as fh:
        fh.seek(entry.start)
        return verity.root_hash_stream(fh, blocks, str(sb["salt"])), sb


CMDLINE_ROOTHASH = re.compile(r"(?:^|\s)roothash=([0-9a-f]{64})(?:\s|$)")


def extract_esp_file(raw: Path, esp_entry: gpt.TableEntry, pattern: str, dest: Path) -> Path | None:
    """Copy the first ESP file under EFI/Linux matching ``pattern`` out of the vfat image (mtools, no mount)."""
    require_tool("mcopy")
    esp_img = dest / "esp.img"
    esp_img.write_bytes(gpt.read_partition(raw, esp_entry))
    env = {"PATH": "/usr/bin:/bin", "MTOOLS_SKIP_CHECK": "1"}
    listing = run(["mdir", "-b", "-i", str(esp_img), "::/EFI/Linux"], env=env, check=False).text.split()
    names = sorted(n for n in listing if re.fullmatch(pattern, n.rsplit("/", 1)[-1]))
    if not names:
        return None
    out = dest / names[0].rsplit("/", 1)[-1]
    run(["mcopy", "-n", "-i", str(esp_img), names[0], str(out)], env=env)
    return out


def verify_image(raw: Path, *, cert: Path, db_cert: Path | None = None) -> Report:
    if not raw.is_file():
        raise FarmError(E.IMAGE_VERIFY, "no such image file", file=raw, hint="check the path")
    report = Report(raw)
    verity_cert = load_cert(cert)
    table = gpt.read_table(raw)
    data_entry = _find(table, gpt.ROOT_X86_64)
    hash_entry = _find(table, gpt.ROOT_X86_64_VERITY)
    sig_entry = _find(table, gpt.ROOT_X86_64_VERITY_SIG)
    report.add("layout", True, f"{len(table)} partitions; root A {data_entry.name}, slot B labelled _empty")
    doc = signature.parse_partition(gpt.read_partition(raw, sig_entry, limit=1 << 20))
    signed_hash = str(doc["rootHash"])
    report.root_hash = signed_hash
    computed, sb = tree_root_hash(raw, data_entry, gpt.read_partition(raw, hash_entry))
    report.add(
        "verity-tree",
        computed == signed_hash,
        f"recomputed {computed} over {sb['data_blocks']} blocks" + ("" if computed == signed_hash else ": MISMATCH"),
    )
    try:
        import base64

        signature.verify_root_hash(signed_hash, base64.b64decode(doc["signature"]), verity_cert)
        report.add("signature", True, f"PKCS#7 over the root hash verifies with {cert.name}")
    except FarmError as exc:
        report.add("signature", False, exc.message)
    fp = fingerprint(verity_cert)
    report.add("certificate", doc.get("certificateFingerprint") == fp, f"fingerprint {fp[:16]}...")
    want_data, want_verity = gpt.root_uuids(signed_hash)
    report.add(
        "partition-uuids",
        (data_entry.uuid, hash_entry.uuid) == (want_data, want_verity),
        f"root {data_entry.uuid}, verity {hash_entry.uuid}",
    )
    esp_entries = [e for e in table if e.type == gpt.ESP]
    if not esp_entries:
        report.add("uki", False, "no ESP")
        return report
    with tempfile.TemporaryDirectory(prefix="mangos-verify-") as tmp:
        uki = extract_esp_file(raw, esp_entries[0], r"mangos_.*\.efi", Path(tmp))
        if uki is None:
            report.add("uki", False, "no mangos_*.efi in EFI/Linux on the ESP")
            return report
        from farm.image.uki import cmdline_of

        cmdline = cmdline_of(uki)
        m = CMDLINE_ROOTHASH.search(cmdline)
        report.add(
            "uki-cmdline",
            bool(m) and m is not None and m.group(1) == signed_hash,
            f"roothash on the UKI command line: {m.group(1) if m else 'none'}",
        )
        report.add("uki-panic-on-corruption", "panic-on-corruption" in cmdline, cmdline)
        if db_cert is not None:
            require_tool("sbverify")
            result = run(["sbverify", "--cert", str(db_cert), str(uki)], check=False)
            report.add("uki-secure-boot", result.returncode == 0, (result.stdout + result.stderr).decode().strip())
        report.uki_sha256 = hashlib.sha256(uki.read_bytes()).hexdigest()
    return report
