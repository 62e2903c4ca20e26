"""Landlock (Linux 5.13+) through its three system calls, for the converter child.

Landlock lets an unprivileged process give up access for good: after
:func:`restrict`, this process and everything it starts can read only beneath
the paths it was given, write only beneath the writable ones, open no TCP
connection (ABI 4, Linux 6.7+), and neither signal nor reach the abstract
Unix sockets of processes outside its sandbox (ABI 6, Linux 6.12+).  It
needs no root, so it also confines the child of a registry that does not run
as root, and it cannot be undone: a sandboxed process may not mount, and
ptrace only processes inside its own sandbox.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable

_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446), "arm64": (444, 445, 446)}

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

READ = READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may hold
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class Unavailable(Exception):
    """This kernel (or a seccomp filter in front of it) offers no Landlock."""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 when it offers none."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return 0
    version = _libc().syscall(numbers[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(version))


def restrict(*, read: Iterable[str], write: Iterable[str], write_files: Iterable[str] = (), abi: int) -> None:
    """Confine this process (and its future children) for good.

    ``read``: paths beneath which files may be read and directories listed;
    ``write``: paths beneath which anything may be read, written, created or
    removed; ``write_files``: single files that may be written (``/dev/null``).
    Executing is not restricted.  Raises :class:`Unavailable` when ``abi`` is 0.
    """
    if abi < 1:
        raise Unavailable("the kernel offers no Landlock")
    libc = _libc()
    create, add_rule, restrict_self = _SYSCALLS[platform.machine()]
    writing = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
               | MAKE_BLOCK | MAKE_SYM)
    if abi >= 2:
        writing |= REFER
    if abi >= 3:
        writing |= TRUNCATE
    if abi >= 5:
        writing |= IOCTL_DEV
    handled = READ | writing
    attr = _RulesetAttr(handled_access_fs=handled,
                        handled_access_net=NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        scoped=SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise Unavailable(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        file_writing = WRITE_FILE | (TRUNCATE if abi >= 3 else 0)
        for paths, access in ((read, READ), (write, handled), (write_files, file_writing)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    allowed = access if os.path.isdir(path) else access & FILE_RIGHTS
                    rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
                    if libc.syscall(add_rule, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                                    ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}) failed: "
                                      f"{os.strerror(ctypes.get_errno())}")
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(restrict_self, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
