"""Kernel-checked system and configuration extensions: the image's systemd 254 (bookworm-backports) and its policy.

bookworm's systemd 252 has neither ``systemd-confext`` nor image policies. An image built with
``Request.systemd = "backports"`` takes systemd, udev and their libraries from bookworm-backports (254; the farm's
``recipes/systemd`` set builds the same source) and gets, from :func:`customize`:

- drop-ins making ``systemd-sysext`` and ``systemd-confext`` merge only signed images
  (``--image-policy=`` :data:`IMAGE_POLICY`: a root or /usr partition must be verity-protected *and* signed, nothing
  else may be present); the signature is checked by the kernel (dm-verity's ``root_hash_sig_key_desc``, against the
  certificate built into the farm's kernel, with ``dm_verity.require_signatures=1`` on the command line). No
  ``/etc/verity.d`` is shipped, so systemd's userspace fallback has no certificate to accept any other signer;
- both services enabled (Debian enables neither), and ``/efi`` for systemd-gpt-auto's ESP automount (254 fails
  ``efi.automount`` without the directory on a read-only root);
- ``mangos-extensions-esp.service``: stages ``/efi/mangos/confexts/*.raw`` and ``/efi/mangos/sysexts/*.raw`` into
  ``/run/confexts`` and ``/run/extensions`` before the merge (the ESP is untrusted storage: what it carries must pass
  the policy and the kernel, see :mod:`farm.image.confext`);
- ``mangos-extensions-report.service``: one console line, :data:`REPORT_MARKER` ``verity-signed=N
  confext-staged=A,B confext-merged=A confext-unit=STATE/RESULT sysext-...`` (N: dm-verity devices the kernel checked
  a signature for, the root's included), after ``MANGOS-EXT-LOG`` lines with the merge units' journal (why an image
  was refused).
"""

from __future__ import annotations

import os
from pathlib import Path

from farm.errors import E, FarmError
from farm.image.payload import enable_units

SYSTEMD_CHOICES = ("", "backports")  # "": bookworm's 252 (no confext, no image policy)
BACKPORTS_SUITE = "bookworm-backports"
# systemd 254's binaries pin each other (= version): all of them come from backports together.
BACKPORTS_PACKAGES = ("libsystemd-shared", "libsystemd0", "libudev1", "systemd", "systemd-dev", "systemd-sysv", "udev")
IMAGE_POLICY = "root=signed+absent:usr=signed+absent:=unused+absent"
REPORT_MARKER = "MANGOS-EXTENSIONS"
LOG_MARKER = "MANGOS-EXT-LOG"

_UNIT = "usr/lib/systemd/system"
_POLICY_DROPIN = """\
# MANGOS: merge only extension images whose verity root hash is signed (and checked by the kernel).
[Service]
ExecStart=
ExecStart={tool} refresh --image-policy={policy}
ExecReload=
ExecReload={tool} refresh --image-policy={policy}
"""
_ESP_SERVICE = """\
# MANGOS: extension images delivered on the (untrusted) ESP go to /run before systemd merges them; the merge checks
# their signatures (kernel keyring) and the image policy, so nothing here is trusted.
[Unit]
Description=MANGOS: stage extension images from the ESP
DefaultDependencies=no
After=local-fs.target efi.automount
Before=systemd-confext.service systemd-sysext.service sysinit.target
ConditionPathIsDirectory=/efi

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/mangos/extensions-esp

[Install]
WantedBy=sysinit.target
"""
_ESP_SCRIPT = """\
#!/bin/sh
# Copy /efi/mangos/{confexts,sysexts}/*.raw (and *.roothash) to /run/{confexts,extensions}/
# (see mangos-extensions-esp.service).
set -u
stage() {
    for f in "$1"/*.raw "$1"/*.roothash; do
        [ -f "$f" ] || continue
        mkdir -p "$2"
        cp "$f" "$2/" && echo "mangos-extensions-esp: staged ${f##*/} into $2"
    done
}
stage /efi/mangos/confexts /run/confexts
stage /efi/mangos/sysexts /run/extensions
exit 0
"""
_REPORT_SERVICE = """\
[Unit]
Description=MANGOS: report which extension images were merged
After=systemd-confext.service systemd-sysext.service mangos-extensions-esp.service
Before=mangos-selftest.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/mangos/extensions-report
StandardOutput=journal

[Install]
WantedBy=multi-user.target
"""
_REPORT_SCRIPT = f"""\
#!/bin/sh
# One console line: the extension images staged, those merged (their extension-release files in the merged tree),
# and the state of the merge units; before it, the units' journal (why an image was refused).
set -u
names() {{
    out=
    for f in $1; do
        [ -e "$f" ] || continue
        n=${{f##*/}}
        n=${{n#extension-release.}}
        out="$out${{out:+,}}${{n%.raw}}"
    done
    echo "${{out:-none}}"
}}
unit() {{
    echo "$(systemctl show -P ActiveState "$1")/$(systemctl show -P Result "$1")"
}}
for u in systemd-confext.service systemd-sysext.service; do
    journalctl -b -q -o cat --no-pager -u "$u" 2>/dev/null | tail -n 8 | sed "s|^|{LOG_MARKER} $u: |" >/dev/console
done
# dm-verity devices whose table carries a signature's keyring key: the kernel checked their root hash signature
signed=$(dmsetup table 2>/dev/null | grep -c ' verity .* root_hash_sig_key_desc ')
line="{REPORT_MARKER} verity-signed=${{signed:-0}} confext-staged=$(names '/run/confexts/*.raw') \\
confext-merged=$(names '/etc/extension-release.d/extension-release.*') confext-unit=$(unit systemd-confext.service) \\
sysext-staged=$(names '/run/extensions/*.raw') \\
sysext-merged=$(names '/usr/lib/extension-release.d/extension-release.*') sysext-unit=$(unit systemd-sysext.service)"
echo "$line"
echo "$line" >/dev/console
"""

# path in the tree -> (text, mode)
FILES: dict[str, tuple[str, int]] = {
    f"{_UNIT}/systemd-confext.service.d/50-mangos-image-policy.conf": (
        _POLICY_DROPIN.format(tool="systemd-confext", policy=IMAGE_POLICY),
        0o644,
    ),
    f"{_UNIT}/systemd-sysext.service.d/50-mangos-image-policy.conf": (
        _POLICY_DROPIN.format(tool="systemd-sysext", policy=IMAGE_POLICY),
        0o644,
    ),
    f"{_UNIT}/mangos-extensions-esp.service": (_ESP_SERVICE, 0o644),
    "usr/lib/mangos/extensions-esp": (_ESP_SCRIPT, 0o755),
    f"{_UNIT}/mangos-extensions-report.service": (_REPORT_SERVICE, 0o644),
    "usr/lib/mangos/extensions-report": (_REPORT_SCRIPT, 0o755),
}
ENABLED = (
    ("systemd-confext.service", "sysinit.target"),
    ("systemd-sysext.service", "sysinit.target"),
    ("mangos-extensions-esp.service", "sysinit.target"),
    ("mangos-extensions-report.service", "multi-user.target"),
)


def check_choice(systemd: str) -> str:
    if systemd not in SYSTEMD_CHOICES:
        raise FarmError(
            E.IMAGE_INPUT,
            f"unknown systemd choice {systemd!r}",
            hint="'' (bookworm's 252) or 'backports' (254 from bookworm-backports: confext, image policies)",
        )
    return systemd


def packages(payload: tuple[str, ...], systemd: str) -> tuple[str, ...]:
    """The payload's package wishes, with systemd 254's packages as ``NAME/bookworm-backports`` when asked for.

    apt resolves ``NAME/SUITE`` from that suite (its dependencies from wherever apt's policy takes them), and the
    root tree installs NAME (:func:`plain_name`)."""
    if not check_choice(systemd):
        return payload
    rest = tuple(p for p in payload if p not in BACKPORTS_PACKAGES)
    return (*rest, *(f"{p}/{BACKPORTS_SUITE}" for p in BACKPORTS_PACKAGES))


def plain_name(wish: str) -> str:
    """``systemd/bookworm-backports`` -> ``systemd``: the package a suite-qualified wish installs."""
    return wish.partition("/")[0]


def digest_text() -> str:
    """What :func:`customize` writes, for the image's tree cache key."""
    return repr((sorted(FILES.items()), ENABLED, IMAGE_POLICY))


def customize(root: Path, *, sde: int) -> None:
    """Write the extension policy, the ESP staging and the report into ``root``; every mtime is ``sde``."""
    if not (root / "usr").is_dir():
        raise FarmError(E.IMAGE_INPUT, f"{root} is not an unpacked root tree (no usr/)", file=str(root))
    touched: list[Path] = []
    efi = root / "efi"
    efi.mkdir(mode=0o755, exist_ok=True)
    touched.append(efi)
    for rel, (text, mode) in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        touched += [path.parent, path]
    touched += enable_units(root, ENABLED)
    verity_d = root / "etc/verity.d"
    if verity_d.exists() and any(verity_d.iterdir()):
        raise FarmError(
            E.IMAGE_BUILD,
            "the root has certificates in /etc/verity.d: systemd would accept extensions they sign",
            file=str(verity_d),
            hint="only the kernel's built-in certificate may accept an extension; remove the package that ships them",
        )
    for path in touched:
        os.utime(path, (sde, sde), follow_symlinks=False)
