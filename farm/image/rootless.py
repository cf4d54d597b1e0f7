"""``image build`` without root: the root tree from ``mmdebstrap --mode=unshare``, dracut in a user namespace.

As root, mmdebstrap writes the tree in place (:mod:`farm.image.rootfs`) and dracut runs over an overlay of it in
a chroot (:func:`farm.image.uki.build_initrd`). A user that is not root gets the same image bytes this way:

* mmdebstrap runs with ``--mode=unshare`` (the user's subordinate uid/gid range from ``/etc/subuid`` and
  ``/etc/subgid``, set by ``newuidmap``/``newgidmap``: the packages install with their real owners inside) and
  writes a tarball, which :func:`unpack` extracts as the user: every file is then the user's, with its mode (setuid
  bits included), links and hard links. Owners need not survive: ``mkfs.erofs --all-root`` records uid and gid 0
  for every file of the image either way (:mod:`farm.image.erofs`).
* Device nodes cannot be made without ``CAP_MKNOD`` in the host's user namespace, so no build keeps any: root
  builds delete the ones mmdebstrap made in ``/dev`` (:func:`drop_device_nodes`). The booted image never sees
  them: the initrd's systemd mounts devtmpfs on ``/dev`` and moves it into the root at switch-root.
* dracut's overlay, /proc and tmpfs mounts and its chroot run as root of a user namespace that maps only the user
  (:data:`DRACUT_USERNS`): the tree is the user's, so it is root's there, as it is in a root build.

``image build`` is never dispatched to workers (they hold no release keys); it runs where the operator runs it.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from farm.build.userns import SUGGESTED_RANGE, IdMap, id_map
from farm.errors import E, FarmError
from farm.run import require_tool, run

# unshare options that make dracut's mounts and chroot possible for a user that is not root (util-linux unshare).
DRACUT_USERNS = ("--user", "--map-root-user")
DEVICE_DIR = "dev"


def needed() -> bool:
    """Whether this process builds without root."""
    return os.geteuid() != 0


def probe_argv() -> list[str]:
    """What dracut's namespace needs, tried once: a user namespace where a mount namespace and a chroot work."""
    return ["unshare", *DRACUT_USERNS, "--mount", "--pid", "--fork", "--", "chroot", "/", "true"]


def preflight(work: Path) -> IdMap:
    """Before a tree is made without root: every privilege it needs is there, or an E-IMAGE-ROOTLESS naming the
    step and what is missing (instead of a failure halfway through the build)."""
    user = _user()
    require_tool("unshare")
    require_tool("newuidmap")
    require_tool("newgidmap")
    found = id_map()
    if found is None:
        raise FarmError(
            E.IMAGE_ROOTLESS,
            f"image build as {user} (not root): the rootfs step (mmdebstrap --mode=unshare) installs packages with "
            "their real owners in a user namespace, which needs a subordinate uid/gid range of 65536 ids; "
            f"{user} has none in /etc/subuid and /etc/subgid",
            hint=f"as root: usermod --add-subuids {SUGGESTED_RANGE} --add-subgids {SUGGESTED_RANGE} {user} "
            "(and apt-get install uidmap); or run image build as root",
        )
    if run(probe_argv(), check=False).returncode != 0:
        raise FarmError(
            E.IMAGE_ROOTLESS,
            f"image build as {user} (not root): the initrd step (dracut) needs CAP_SYS_ADMIN and CAP_SYS_CHROOT in "
            "a user namespace of its own (overlay mount, chroot), and this kernel refuses unprivileged user "
            "namespaces",
            hint="allow them (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0), "
            "or run image build as root",
        )
    _check_reachable(work, user)
    return found


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _check_reachable(work: Path, user: str) -> None:
    """apt inside mmdebstrap's namespace is a subordinate id, an "other" user to the files of ``user``: it reads
    the local repository under ``work`` only if every directory on the way lets others in."""
    path = work.resolve()
    for directory in [path, *path.parents]:
        if directory.exists() and not directory.stat().st_mode & stat.S_IXOTH:
            raise FarmError(
                E.IMAGE_ROOTLESS,
                f"image build as {user} (not root): the rootfs step's apt runs as a subordinate id and cannot "
                f"enter {directory} (mode {stat.S_IMODE(directory.stat().st_mode):04o}) to read the image's "
                f"packages under {work}",
                file=str(directory),
                hint=f"chmod o+x {directory}, or use a MANGOS_FARM_HOME others may traverse",
            )


def share(repo: Path) -> None:
    """Let mmdebstrap's apt (a subordinate id: "others" to this user's files) read the local repository."""
    for path in repo.iterdir():
        if path.is_file():
            path.chmod(0o644)


def mmdebstrap_mode_args(tar: Path) -> tuple[list[str], str]:
    """mmdebstrap's mode and format options, and its output, for a build without root."""
    return ["--mode=unshare", "--format=tar"], str(tar)


def unpack(tar: Path, dest: Path) -> None:
    """Extract mmdebstrap's tarball into ``dest`` as this user: modes, links and mtimes kept, owners not (they
    cannot be), device nodes left out (they cannot be made). The tarball is the farm's own, from verified .debs;
    still, a member that would land outside ``dest`` stops the build."""
    dest.mkdir(parents=True)
    with tarfile.open(tar) as archive:
        members = []
        for member in archive:
            name = os.path.normpath(member.name)
            if name.startswith(("/", "..")):
                raise FarmError(E.IMAGE_BUILD, f"mmdebstrap's tarball holds {member.name!r}", file=str(tar))
            if not (member.ischr() or member.isblk()):
                members.append(member)
        if hasattr(tarfile, "fully_trusted_filter"):  # Python's with extraction filters: the old behaviour, named
            archive.extractall(dest, members, filter="fully_trusted")  # noqa: S202 (checked above; our own tarball)
        else:
            archive.extractall(dest, members)  # noqa: S202 (checked above; our own tarball)
    for member in members:  # tarfile leaves a symlink's mtime at now; mkfs.erofs records it (clamped to -T)
        if member.issym():
            os.utime(dest / member.name, (member.mtime, member.mtime), follow_symlinks=False)


def drop_device_nodes(tree: Path) -> list[str]:
    """Delete the character and block devices in the tree's /dev (what a build without root cannot make)."""
    dropped = []
    top = tree / DEVICE_DIR
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                path.unlink()
                dropped.append(str(path.relative_to(tree)))
    return sorted(dropped)


def remove(path: Path) -> None:
    """Delete a tree this user made, directories without write permission (dracut's overlay work dir) included."""
    import shutil

    def retry(func: object, failed: str, _exc: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed, onerror=retry)
        else:
            os.unlink(failed)

    if path.exists():
        shutil.rmtree(path, onerror=retry)
