"""Debian package builds: dpkg-buildpackage inside a pinned build environment, offline, as an unprivileged user.

The environment (an mmdebstrap buildd tar, stored by its sha256) is unpacked once per machine and used read-only
as the lower layer of an overlay; each build gets its own writable layer, so builds never see each other and two
can run at once. Everything runs in fresh namespaces (mount, pid, net, uts, ipc) created with ``unshare``: the
mounts exist only inside that mount namespace, so they disappear with the build, on failure too. There is no
network: build-dependencies come from a read-only local repository holding exactly the pinned archive .debs
(fetched from the farm's store by sha256) and the .debs of dependency recipes, installed with
``apt-get build-dep`` as root inside the build root; ``dpkg-buildpackage`` then runs as uid 1000 with a clean
environment, a fixed build path (/build/src), a fixed hostname and SOURCE_DATE_EPOCH from debian/changelog (a
recheck varies these on purpose, :mod:`farm.build.variation`; the pinned environment itself never changes).

(bubblewrap 0.8 has no overlay support, which is why this path uses unshare + overlayfs + chroot.) A worker that
is not root runs it all in a user namespace mapping its subordinate ids (:mod:`farm.build.userns`): the environment
is unpacked with its real owners (inner root is the worker), the mounts are the namespace's own, the build user is
uid 1000 inside and a subordinate uid outside, and the build's files are handed back to the worker afterwards. A
root worker runs the same script without the user namespace (and logs once that it need not be root).
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import posixpath
import shlex
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from farm.build import binnmu, buildd, userns
from farm.build.sandbox import SRC, Limits, launcher_env, run_limited
from farm.build.userns import IdMap
from farm.build.variation import I18N, Variation, clamp_mtimes, disorderfs_argv, locale_parts
from farm.errors import E, FarmError
from farm.log import step
from farm.recipes import Recipe
from farm.run import require_tool, run
from farm.store import Store

log = logging.getLogger(__name__)

BUILD_UID = 1000
HOSTNAME = "mangos-buildd"
# The host's libfaketime (package libfaketime), for a recheck's shifted clock inside the build root.
FAKETIME_LIB = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), "libfaketime.so.1")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEVPTS_OPTIONS = "newinstance,ptmxmode=0666,mode=620,gid=5"  # the build root's own ptys (sbuild mounts the same)


def build_id_map() -> IdMap | None:
    """None for a root worker (which logs once that it need not be root); for any other worker its subordinate-id
    map, or the E-WORKER-SUBIDS refusal (:func:`farm.build.userns.require_id_map`)."""
    if userns.note_root():
        return None
    require_tool("newuidmap")
    return userns.require_id_map()


def unpack_argv(tar: Path, dest: Path, idmap: IdMap | None) -> list[str]:
    """tar keeping the environment's owners; without root, as inner root of ``idmap`` and without /dev's device
    nodes (a user namespace cannot make them; the build mounts its own /dev)."""
    argv = ["tar", "-x", "-p", "--numeric-owner", "-f", str(tar), "-C", str(dest)]
    return argv if idmap is None else userns.wrap(idmap, [*argv, "--exclude=./dev/*"])


def env_root(store: Store, digest: str, cache: Path) -> Path:
    """The environment unpacked read-only under CACHE/envs/<digest>/root, once per machine (under a lock). Without
    root it is unpacked with the worker's id map, as ``root-<map tag>``: its owners are subordinate ids."""
    idmap = build_id_map()
    base = cache / "envs" / digest
    root = base / ("root" if idmap is None else f"root-{idmap.tag}")
    base.mkdir(parents=True, exist_ok=True)
    with (base / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():
            return root
        with step("unpack environment", log, digest=digest[:12]):
            tar = base / "env.tar"
            store.fetch_blob(digest, tar)  # verifies the sha256: the environment is what was recorded
            tmp = base / f"{root.name}.tmp"
            if idmap is not None and tmp.exists():
                run(userns.reclaim_argv(idmap, [], [tmp]))
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            run(unpack_argv(tar, tmp, idmap))
            tmp.chmod(0o755)  # the root directory itself is not in the tar: do not inherit the worker's umask
            tar.unlink()
            os.replace(tmp, root)
    return root


def stage_repo(repo: Path, recipe: Recipe, store: Store, dependency_debs: Iterable[Path]) -> int:
    """The local repository: pinned archive packages plus dependency recipes' .debs, with a Packages index."""
    repo.mkdir(parents=True, exist_ok=True)
    count = 0
    for pin in recipe.pins():
        name = f"{pin['package']}_{pin['version'].replace(':', '%3a')}_{pin['arch']}.deb"
        store.fetch_blob(pin["sha256"], repo / name)  # refuses a blob whose bytes are not the pinned sha256
        count += 1
    for deb in dependency_debs:
        shutil.copyfile(deb, repo / deb.name)
        count += 1
    index = run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo).stdout
    (repo / "Packages").write_bytes(index)
    return count


def inner_script(
    epoch: int,
    jobs: int,
    variation: Variation | None = None,
    options: tuple[str, ...] = (),
    profiles: tuple[str, ...] = (),
    *,
    build_type: str = "-b",
) -> str:
    """What runs inside the build root: offline build-deps, then dpkg-buildpackage as uid 1000 in /build/src.

    A recheck's ``variation`` moves the source (its build path), changes TZ, locale (compiled here, into this
    build's overlay, from the host's locale sources that :func:`outer_script` binds), umask, uid and user name,
    parallelism, CPU set and kernel version, and shifts the build's clock with the host's libfaketime. The build
    user, its home and environment are a buildd's (:mod:`farm.build.buildd`), with the recipe's DEB_BUILD_OPTIONS
    words (``options``) and build ``profiles``; ``build_type`` is dpkg-buildpackage's (``-B`` for a binNMU)."""
    v = variation
    uid = v.uid if v else BUILD_UID
    build_dir = v.build_dir if v else SRC
    parent = posixpath.dirname(build_dir)
    user = buildd.build_user(uid, v.user if v else "")
    env = buildd.build_env(user, epoch=epoch, jobs=v.jobs if v else jobs, options=options)
    varied: list[str] = []
    prefix = ""
    if v is not None:
        env |= {k: val for k, val in v.env().items() if k not in ("JOBS", "SRC")}
        if v.clock_shift_days:
            env |= {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": f"+{v.clock_shift_days}d"}
        parts = locale_parts(v.locale)
        if parts is not None:
            varied.append(f"localedef -i {parts[0]} -f {parts[1]} {shlex.quote(v.locale)}")
        prefix = shlex.join(v.process_prefix()) + " " if v.process_prefix() else ""
    build_env = " ".join(shlex.quote(f"{k}={val}") for k, val in sorted(env.items()))
    build = shlex.quote(f"cd {build_dir} && {shlex.join(buildd.dpkg_buildpackage_argv(profiles, build_type))}")
    return "\n".join(
        [
            "set -eu",
            f"umask {v.umask:03o}" if v else "umask 022",  # never the worker's: modes end up in .debs
            "rm -f /etc/apt/sources.list.d/* /etc/apt/sources.list",
            'echo "deb [trusted=yes] file:/build/repo ./" > /etc/apt/sources.list',
            "export DEBIAN_FRONTEND=noninteractive",
            'echo "==> phase build-deps $(date +%s.%N)"',
            "apt-get -q -o Acquire::Languages=none update",
            f"cd {build_dir}",
            shlex.join(buildd.build_dep_argv(profiles)),
            *varied,
            *buildd.account_script(user),
            'echo "==> phase dpkg-buildpackage $(date +%s.%N)"',
            f"chown -R {uid}:{uid} {build_dir} /build/out",
            f"chown {uid}:{uid} {parent}",
            f"setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all "
            f"env -i {build_env} {prefix}sh -c {build}",
            f"cp {parent}/*.deb {parent}/*.buildinfo /build/out/",
            'echo "==> phase done $(date +%s.%N)"',
        ]
    )


def outer_script(
    *,
    lower: Path,
    layer: Path,
    src: Path,
    repo: Path,
    out: Path,
    inner: str,
    variation: Variation | None = None,
    src_mount: Path | None = None,
    userxattr: bool = False,
) -> str:
    """Host side, inside the new mount namespace: overlay, /proc, a minimal /dev (with a devpts of its own), binds,
    then chroot.

    ``userxattr``: the overlay keeps its bookkeeping in user.* xattrs, as it must when mounted in a user namespace
    (without it, deleting or renaming a lower directory fails with EIO or EXDEV).

    With a file-order variation the source is mounted through disorderfs. disorderfs (``--multi-user``) reaches
    its root directory as the calling user, so the build user must be able to walk to it: the source is first
    bound at ``src_mount`` (an empty directory under a world-traversable one, only mounted in this namespace)
    rather than used where the worker's private work directory holds it."""
    v = variation
    merged, upper, work = layer / "merged", layer / "upper", layer / "work"
    q = shlex.quote
    lines = [
        "set -eu",
        "umask 022",
        "mount --make-rprivate /",
        f"mkdir -p {q(str(merged))} {q(str(upper))} {q(str(work))}",
        f"mount -t overlay overlay -o {'userxattr,' if userxattr else ''}lowerdir={lower},upperdir={upper},"
        f"workdir={work} {q(str(merged))}",
        f"mount -t proc proc {q(str(merged / 'proc'))}",
        f"mount -t tmpfs -o mode=755 tmpfs {q(str(merged / 'dev'))}",
    ]
    for dev in DEVICES:
        target = q(str(merged / "dev" / dev))
        lines += [f"touch {target}", f"mount --bind /dev/{dev} {target}"]
    lines += [
        f"mkdir -p {q(str(merged / 'dev/shm'))} {q(str(merged / 'dev/pts'))}",
        # Ptys as sbuild gives them (test suites run under expect/dejagnu or script): a devpts instance of the
        # build's own, its ptmx the /dev/ptmx; new ptys belong to group tty (5) as on any Debian system.
        f"mount -t devpts -o {DEVPTS_OPTIONS} devpts {q(str(merged / 'dev/pts'))}",
        f"ln -s pts/ptmx {q(str(merged / 'dev/ptmx'))}",
        f"ln -s /proc/self/fd {q(str(merged / 'dev/fd'))}",
        f"mount -t tmpfs tmpfs {q(str(merged / 'dev/shm'))}",
        f"mount -t tmpfs tmpfs {q(str(merged / 'tmp'))}",
    ]
    inside_src = (v.build_dir if v else SRC).lstrip("/")
    for host, inside, ro in ((src, inside_src, False), (repo, "build/repo", True), (out, "build/out", False)):
        target = q(str(merged / inside))
        if host == src and v is not None and v.file_order and src_mount is not None:
            lines += [f"mkdir -p {target}", f"mount --bind {q(str(src))} {q(str(src_mount))}"]
            lines.append(shlex.join(disorderfs_argv(src_mount, merged / inside)))
            continue
        lines += [f"mkdir -p {target}", f"mount --bind {q(str(host))} {target}"]
        if ro:
            lines.append(f"mount -o remount,bind,ro {target}")
    if v is not None and locale_parts(v.locale) is not None:  # the locale sources localedef compiles from
        target = q(str(merged) + str(I18N))
        lines += [f"mkdir -p {target}", f"mount --bind -o ro {I18N} {target}"]
    if v is not None and v.clock_shift_days:  # a recheck's shifted clock: the host's libfaketime, read-only
        target = q(str(merged) + FAKETIME_LIB)
        lines += [f"mkdir -p $(dirname {target})", f"touch {target}", f"mount --bind -o ro {FAKETIME_LIB} {target}"]
    lines.append(f"hostname {q(v.hostname if v else HOSTNAME)}")
    if v is not None and v.domain:
        lines.append(f"domainname {q(v.domain)}")
    lines.append(f"exec chroot {q(str(merged))} /bin/sh -c {q(inner)}")
    return "\n".join(lines)


def unshare_argv(script: str, idmap: IdMap | None = None) -> list[str]:
    """The build's namespaces (mount, pid, net, uts, ipc); without root, inside a user namespace with ``idmap``."""
    return [
        "unshare",
        *(idmap.unshare_args() if idmap is not None else []),
        "--mount",
        "--pid",
        "--net",
        "--uts",
        "--ipc",
        "--fork",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]


def run_debian_build(
    recipe: Recipe,
    *,
    env_lower: Path,
    workdir: Path,
    src: Path,
    repo: Path,
    out: Path,
    epoch: int,
    jobs: int,
    logfh: IO[bytes],
    timeout: float,
    variation: Variation | None = None,
    limits: Limits | None = None,
) -> None:
    idmap = build_id_map()
    require_tool("unshare")
    layer = workdir / "layer"
    src_mount = None
    if recipe.binnmu:  # before a recheck clamps the mtimes: the entry is part of the source the build sees
        arch = run(["dpkg", "--print-architecture"]).stdout.decode().strip()
        version = binnmu.apply(src, recipe.binnmu, recipe.binnmu_message, arch=arch, epoch=epoch)
        logfh.write(f"==> binNMU {recipe.binnmu}: binaries versioned {version}\n".encode())
    if variation is not None:
        if variation.domain:
            require_tool("domainname")
        clamp_mtimes(src, epoch)
        if variation.file_order:
            require_tool("disorderfs")
            src_mount = Path(tempfile.mkdtemp(prefix="mangos-disorderfs-"))
    build_type = binnmu.build_type(recipe.binnmu, arch_all=recipe.arch_all)  # -B: the architecture's own packages
    script = outer_script(
        lower=env_lower,
        layer=layer,
        src=src,
        repo=repo,
        out=out,
        inner=inner_script(epoch, jobs, variation, recipe.options, recipe.profiles, build_type=build_type),
        variation=variation,
        src_mount=src_mount,
        userxattr=idmap is not None,
    )
    logfh.write(f"==> dpkg-buildpackage {build_type} in environment {env_lower.parent.name[:16]}\n".encode())
    logfh.flush()
    # The same limits as sandboxed steps (a cgroup for processes and memory, rlimits), and a clean environment:
    # nothing of the worker's (AWS_*, broker URL, key paths) is inherited by the build root's processes.
    result, hit = run_limited(
        unshare_argv(script, idmap),
        limits or Limits(),
        logfh=logfh,
        timeout=timeout,
        env=launcher_env() | {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if idmap is not None:  # the build user's files are a subordinate uid's: the namespace's root gives them back
        back = run(userns.reclaim_argv(idmap, [src, out], [layer]), check=False)
        if back.returncode != 0:
            log.warning(
                "could not reclaim the files of a rootless build in %s: %s",
                workdir,
                back.stderr[-500:].decode(errors="replace"),
            )
    shutil.rmtree(layer, ignore_errors=True)
    if src_mount is not None:
        src_mount.rmdir()  # only ever a mountpoint in the build's namespace: empty here
    if result.timed_out:
        raise FarmError(
            E.SANDBOX_LIMIT,
            "the debian build timed out and was killed",
            file=recipe.path,
            hint="raise MANGOS_FARM_BUILD_TIMEOUT",
        )
    if hit and result.returncode != 0:
        raise FarmError(
            E.SANDBOX_LIMIT,
            f"the debian build exceeded its {' and '.join(hit)} limit",
            file=recipe.path,
            hint="raise MANGOS_FARM_BUILD_MEMORY_MB / MANGOS_FARM_BUILD_PROCESSES on the workers if it is legitimate",
        )
    if result.returncode != 0:
        raise FarmError(
            E.BUILD_FAILED,
            f"dpkg-buildpackage failed (exit {result.returncode})",
            file=recipe.path,
            hint="read the log tail and the cause classified at its end ('!!! cause:')",
        )


def dependency_debs(deps_dir: Path) -> list[Path]:
    return sorted(deps_dir.rglob("*.deb"))
