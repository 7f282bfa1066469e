"""Confine the export worker: Landlock read and write rules, no core dumps, death with its parent.

Loading a model file and converting it run in a child process (``tfship.exporter.worker``) that calls
:func:`confine` first thing, while it still has a single thread (Landlock restricts the calling thread
and the threads it starts later, never threads that already run).

With Landlock, the worker may create, write, rename and delete regular files and directories only
under the staging directory and its private temporary folders (its working directory, and ``TMPDIR``:
TFLite and tf2onnx write temporary files), and write to ``/dev/null``. It may not create symlinks, devices, FIFOs or sockets anywhere,
open TCP connections (ABI 4+), nor signal processes or reach abstract UNIX sockets outside itself
(ABI 6+). When the caller passes ``readable``, reads and executions are confined too: the worker may
read, list and execute only beneath those paths (read and list the writable ones), and only list the
``listable`` folders, so the signing key next to the model or ``~/.ssh`` cannot be read and copied
into the version the parent signs. Denied operations fail with ``EACCES``.

Landlock is reached through its three system calls with ctypes. The ``landlock`` package on PyPI
(1.0.0.dev5, "Alpha") handles file rules only (no network or scope rules), leaks the ruleset
descriptor and has had no release since 2025; the calls are small and stable kernel ABI, so tfship
makes them itself.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# System call numbers are the same on every Linux architecture (the unified table, since 5.13).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38

# include/uapi/linux/landlock.h
_EXECUTE = 1 << 0
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_WRITE_FILE = 1 << 1
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


# Open descriptors of rule paths in procfs: a process's /proc/<pid> gets a new inode whenever its dentry is
# looked up afresh, so the dentry a rule names is kept alive for the life of the process.
_PINNED: list[int] = []


@dataclass(frozen=True)
class Confinement:
    """What :func:`confine` could enforce in this process."""

    landlock_abi: int  # 0: the kernel offers no Landlock
    writes_confined: bool
    reason: str = ""
    reads_confined: bool = False

    def describe(self) -> str:
        if not self.writes_confined:
            return f"writes NOT confined ({self.reason}); reads NOT confined; the worker runs in an empty temporary directory"
        reads = ("reads confined to Python, system libraries, the model and the files named on the command line"
                 if self.reads_confined else "reads NOT confined")
        return (f"writes confined to the staging directory and private temporary folders (Landlock ABI {self.landlock_abi}); "
                f"{reads}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers, 0 when it offers none."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    version = syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def die_with_parent(parent_pid: int) -> None:
    """Get SIGKILL when the parent dies; exit now if it already died before we asked."""
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def limit_resources() -> None:
    """Cheap limits: no core files (a crash inside a converter must not dump the model and memory)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def confine(writable: Sequence[Path], writable_files: tuple[Path, ...] = (Path("/dev/null"),),
            readable: Sequence[Path] | None = None, listable: Sequence[Path] = ()) -> Confinement:
    """Allow writes only beneath ``writable`` (and to ``writable_files``) for the rest of this process.

    With ``readable`` (a list, even empty), reads are confined too: files may be read and executed only
    beneath ``readable`` and ``writable``, folders listed only there and in ``listable``. Paths that
    do not exist are skipped. Without it, reads are not restricted.
    """
    abi = landlock_abi()
    if abi < 1:
        return Confinement(0, False, "the kernel offers no Landlock")
    if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
        # Landlock binds the calling thread and the threads it starts later, not threads already running.
        return Confinement(abi, False, "the process already runs several threads")
    dir_rights = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_DIR | _MAKE_REG
    handled_fs = dir_rights | _MAKE_CHAR | _MAKE_SOCK | _MAKE_FIFO | _MAKE_BLOCK | _MAKE_SYM
    if abi >= 2:
        handled_fs |= _REFER
        dir_rights |= _REFER
    file_rights = _WRITE_FILE
    if abi >= 3:
        handled_fs |= _TRUNCATE
        dir_rights |= _TRUNCATE
        file_rights |= _TRUNCATE
    reads = readable is not None
    read_dir_rights = read_file_rights = 0
    if reads:
        read_file_rights = _READ_FILE | _EXECUTE
        read_dir_rights = read_file_rights | _READ_DIR
        handled_fs |= read_dir_rights
        dir_rights |= _READ_FILE | _READ_DIR  # what the worker writes, it may read back, not execute
        file_rights |= _READ_FILE
    attr = _RulesetAttr(handled_access_fs=handled_fs,
                        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(ctypes.c_uint64) * (3 if abi >= 6 else 2 if abi >= 4 else 1)
    libc = _libc()
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    ruleset = syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return Confinement(abi, False, f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    # (path, rights on a directory, rights on a file): Landlock refuses directory rights in a rule on a file.
    rules = ([(path, dir_rights, file_rights) for path in writable]
             + [(path, file_rights, file_rights) for path in writable_files]
             + [(path, read_dir_rights, read_file_rights) for path in readable or ()]
             + [(path, _READ_DIR, 0) for path in listable])
    try:
        for path, on_dir, on_file in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                if path in writable:  # the staging and private folders always exist: their absence is a bug
                    raise
                continue
            pin = False
            try:
                rights = on_dir if stat.S_ISDIR(os.fstat(fd).st_mode) else on_file
                if not rights:
                    continue
                rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
                if syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                           ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return Confinement(abi, False, f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}")
                pin = os.path.realpath(path).startswith("/proc/")
            finally:
                if pin:
                    _PINNED.append(fd)
                else:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return Confinement(abi, False, f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
        if syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return Confinement(abi, False, f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return Confinement(abi, True, reads_confined=reads)
