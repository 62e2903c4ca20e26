"""Least privilege for the converter child, set up by the child itself before it reads an upload.

The scan of an upload can have gaps, so the process that handles it is
confined as well.  When the registry runs as root the child

1. moves into its own mount, IPC, PID and network namespaces (no network
   but a loopback that is down; it sees no other process);
2. remounts every file system read-only except its work directory, and hides
   ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run`` (sockets of local
   services included) behind empty read-only folders; directories its user
   could not traverse (``/root`` holding a pyenv Python, say) are hidden the
   same way, with only the Python installation, the virtualenv and the
   ``registry`` package bound back, read-only, at the same paths;
3. drops to ``REGISTRY_CONVERT_USER`` (``nobody``) with no supplementary groups.

Every child, root's or not, then sets ``no_new_privs`` and confines itself
with Landlock where the kernel has it: reading only the system folders, the
Python installation and its work directory, writing only its work directory,
no TCP, no signals or abstract sockets outside its sandbox.

Whatever could not be set up is said in the description :func:`enter`
returns (and logged): the child goes on with what the kernel allows.

The namespaces are entered here, in the child, rather than between fork and
exec in the parent (see ``runner.apply_limits``).  The PID namespace needs a
fork after ``unshare``: the child started by the runner waits for its first
process in the new namespace (``init``, which reaps) and ends the way the
process doing the work ended, so the runner's reading of exit statuses holds;
when ``init`` ends, the kernel kills whatever the conversion left running.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import stat
import struct
import sys
from pathlib import Path

import registry
from registry.converter import landlock
from registry.errors import ConverterSandboxError

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

HIDDEN = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # world-writable, or holding local services' sockets
SYSTEM = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def die_with_parent(parent: int | None = None, lifeline: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies, so that a worker killed
    mid-conversion does not leave the conversion running on its own.  Cleared by a
    change of user, so set again after dropping privileges.  ``parent`` (its pid) or
    ``lifeline`` (the read end of a pipe the parent holds open) tells whether the
    parent died before the call."""
    if not sys.platform.startswith("linux"):
        return
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if lifeline is not None and select.select([lifeline], [], [], 0)[0]:  # EOF: the holder is gone
        os._exit(1)


# -- the child ---------------------------------------------------------------------------------

def enter(spec: dict, parent: int) -> dict:
    """Confine this process as ``spec`` (from the runner) asks; return what holds.

    Called by the child first thing, single-threaded, after the resource limits.
    When running as root it forks (PID namespace): only the process that is to do
    the work returns from here.
    """
    workdir = os.path.realpath(spec["workdir"])
    uid, gid, user = spec.get("uid"), spec.get("gid"), spec.get("user", "")
    needed = _needed_paths(workdir)
    info: dict = {"gaps": []}
    os.umask(0o022)  # the placeholders made below must be traversable; tightened at the end
    if os.geteuid() == 0:
        _confine_as_root(workdir, needed, uid, gid, user, parent, info)
    else:
        info["user"] = f"uid {os.geteuid()}: the registry does not run as root, so the child keeps its user"
        info["filesystem"] = "no own mount namespace (needs root)"
        info["network"] = "no own network namespace (needs root)"
        info["gaps"].append("the registry does not run as root: the converter child keeps its user and gets no "
                            "namespaces, only Landlock")
    _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")  # no setuid programs
    _landlock(workdir, needed, info)
    _require_access(needed, workdir, user, uid, gid)
    os.environ["TMPDIR"] = os.environ["HOME"] = workdir
    os.umask(0o077)
    info["uid"] = os.geteuid()
    return info


def _confine_as_root(workdir: str, needed: list[str], uid: int | None, gid: int | None, user: str, parent: int,
                     info: dict) -> None:
    """Namespaces, mounts, then the drop to ``uid``/``gid`` (None: stay root)."""
    isolated = _try(info, "filesystem", lambda: _unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID))
    networkless = _try(info, "network", lambda: _unshare(CLONE_NEWNET))
    if isolated:
        _fork_into_pid_namespace()
        _confine_mounts(workdir, needed, uid, gid, info)
        info["filesystem"] = ("own mount namespace: everything read-only but the work directory; "
                              f"{', '.join(HIDDEN)} and untraversable folders hidden; own PID namespace")
    if networkless:
        info["network"] = "none: own network namespace (only a loopback interface, down)"
    os.chdir(workdir)  # its own mount now
    if uid is None:
        info["user"] = "root: REGISTRY_CONVERT_USER keeps the registry's own user"
        info["gaps"].append("the converter child runs as root (REGISTRY_CONVERT_USER)")
        return
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    die_with_parent()  # cleared by setresuid; the parent is init of the PID namespace, or the runner
    if not isolated and os.getppid() != parent:
        os._exit(1)
    info["user"] = f"{user} (uid {uid}, gid {gid}), no supplementary groups"


def _landlock(workdir: str, needed: list[str], info: dict) -> None:
    abi = landlock.abi_version()
    try:
        landlock.restrict(read=[p for p in SYSTEM if os.path.isdir(p)] + needed, write=[workdir],
                          write_files=["/dev/null"], abi=abi)
    except (landlock.Unavailable, OSError) as exc:
        info["landlock"] = f"unavailable: {exc}"
        info["gaps"].append(f"Landlock: {exc}")
        return
    info["landlock"] = (f"ABI {abi}: reads only system folders, the Python installation and the work "
                        "directory; writes only the work directory"
                        + ("; no TCP" if abi >= 4 else "")
                        + ("; no signals or abstract Unix sockets outside the sandbox" if abi >= 6 else ""))
    if abi >= 4 and not info["network"].startswith("none"):
        info["network"] = f"no TCP (Landlock); {info['network']}"


def _try(info: dict, what: str, action) -> bool:
    try:
        action()
        return True
    except OSError as exc:
        message = f"{what} not isolated: {exc.strerror or exc} (the kernel or a container refused it)"
        info[what] = message
        info["gaps"].append(message)
        print(f"converter sandbox: {message}", file=sys.stderr)
        return False


def _needed_paths(workdir: str) -> list[str]:
    """What the child must still read: the Python installation, the virtualenv, every
    import path, the ``registry`` package, and its work directory."""
    candidates = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                  *[p for p in sys.path if p and os.path.isabs(p)], *registry.__path__, workdir]
    found = sorted({os.path.realpath(p) for p in candidates if os.path.exists(p)}, key=lambda p: (len(p), p))
    kept: list[str] = []
    for path in found:
        if not any(_under(path, k) for k in kept):
            kept.append(path)
    return kept


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _searchable(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _masks(needed: list[str], uid: int | None, gid: int | None) -> list[str]:
    """Folders to hide behind empty read-only ones: HIDDEN, and for each needed path the
    first folder on the way to it that its user could not traverse."""
    masks = {p for p in HIDDEN if os.path.isdir(p) and not os.path.islink(p)}
    for path in needed:
        if uid is None or any(_under(path, m) for m in masks):
            continue
        parts = Path(path).parts
        for depth in range(2, len(parts)):
            folder = str(Path(*parts[:depth]))
            if not _searchable(folder, uid, gid):
                masks.add(folder)
                break
    masks = {m for m in masks if not any(_under(m, n) for n in needed)}
    return sorted(m for m in masks if not any(_under(m, o) and m != o for o in masks))


def _fork_into_pid_namespace() -> None:
    """After ``unshare(CLONE_NEWPID)``: fork init, which forks the worker; only the worker returns.

    This process waits for init and ends as the worker ended (init reports the worker's
    wait status through a pipe: as PID 1, init itself could not die of most signals)."""
    status_r, status_w = os.pipe()
    lifeline_r, lifeline_w = os.pipe()
    init = os.fork()
    if init:
        os.close(status_w)
        os.close(lifeline_r)
        _wait_and_mirror(init, status_r)
    os.close(status_r)
    os.close(lifeline_w)
    die_with_parent(lifeline=lifeline_r)
    os.close(lifeline_r)
    worker = os.fork()
    if worker:
        status = _reap_until(worker)
        os.write(status_w, struct.pack("i", status))
        os._exit(0)  # the kernel kills whatever else is left in the namespace
    os.close(status_w)
    die_with_parent()  # init is our parent


def _reap_until(pid: int) -> int:
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 1 << 8
        if done == pid:
            return status


def _wait_and_mirror(pid: int, status_pipe: int) -> None:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    data = os.read(status_pipe, 4)
    if len(data) == 4:
        status = struct.unpack("i", data)[0]
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sig = -code
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(code)


def _confine_mounts(workdir: str, needed: list[str], uid: int | None, gid: int | None, info: dict) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done below reaches the host
    _mount(workdir, workdir, None, MS_BIND | MS_REC)  # its own mount, left writable
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this PID namespace's processes only
    masks = _masks(needed, uid, gid)
    sources = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in needed if any(_under(p, m) for m in masks)}
    failed = []
    for mount_point in _mount_points():
        if _under(mount_point, workdir) or mount_point.startswith("/proc/"):  # the fresh /proc hides the latter
            continue
        try:
            _mount(None, mount_point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(mount_point))
        except OSError:
            failed.append(mount_point)
    if "/" in failed:
        raise ConverterSandboxError("could not remount / read-only in the converter child's mount namespace")
    if failed:
        info["gaps"].append(f"not remounted read-only (shadowed or refused): {', '.join(failed)}")
    for mask in masks:
        _mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=256")
        for path in needed:
            if not _under(path, mask):
                continue
            if os.path.isdir(f"/proc/self/fd/{sources[path]}"):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                open(path, "x").close()
            _mount(f"/proc/self/fd/{sources[path]}", path, None, MS_BIND | MS_REC)
            if path != workdir:
                _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(path))
        _mount(None, mask, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for fd in sources.values():
        os.close(fd)


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            points.append(raw.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace"))
    return points


def _kept_flags(path: str) -> int:
    """The per-mount flags a read-only remount must keep (nosuid, nodev, noexec, noatime)."""
    try:
        flags = os.statvfs(path).f_flag
    except OSError:
        return MS_NOSUID | MS_NODEV
    kept = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME)):
        if flags & st_flag:
            kept |= ms_flag
    return kept


def _require_access(needed: list[str], workdir: str, user: str, uid: int | None, gid: int | None) -> None:
    for path in needed:
        mode = os.R_OK | (os.X_OK if os.path.isdir(path) else 0) | (os.W_OK if path == workdir else 0)
        if not os.access(path, mode):
            who = f"{user} (uid {uid}, gid {gid}, REGISTRY_CONVERT_USER)" if uid is not None else "its user"
            raise ConverterSandboxError(
                f"the converter child runs as {who} but cannot {'write' if path == workdir else 'read'} {path}: "
                "make that path readable by that user (chmod o+rX, and o+x on the folders above it), or set "
                "REGISTRY_CONVERT_USER to a user that can read it")
