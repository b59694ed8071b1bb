"""The control protocol's plumbing: where a mount's socket lives, and one JSON line each way.

Everything here follows docs/PROTOCOL.md; the socket's name is derived from the mount directory
so that any client finds the same daemon without a registry.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import shutil
import socket
import sys
import sysconfig
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ImgfsError, from_answer

PathLike = str | os.PathLike[str]  # what every path parameter accepts


def normalize_dir(path: PathLike) -> str:
    """Absolute and lexically normalized, without following symlinks: the daemon hashes exactly
    this text, so resolving a symlink here would find a different socket."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _runtime_dir() -> str | None:
    return os.environ.get("XDG_RUNTIME_DIR") or None


def default_dir() -> str:
    """The mount directory used when none is given: $IMGFS_MOUNT, else the daemon's default."""
    env = os.environ.get("IMGFS_MOUNT")
    if env:
        return normalize_dir(env)
    run = _runtime_dir()
    return os.path.join(run, "imgfs") if run else f"/tmp/imgfs-{os.getuid()}"


def control_dir() -> str:
    run = _runtime_dir()
    return os.path.join(run, "imgfs-control") if run else f"/tmp/imgfs-control-{os.getuid()}"


def ensure_control_dir() -> str:
    """The control directory, created 0700 if missing, as the daemon does: in /tmp another user
    may have made the name first, so an existing one must be a real directory of ours."""
    path = control_dir()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, 0o700)  # never follows a symlink in its last component
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ImgfsError(f"refusing to use {path}: it is not a directory (or is a symbolic link)")
    if st.st_uid != os.getuid():
        raise ImgfsError(
            f"refusing to use {path}: it is owned by uid {st.st_uid}, not by this user "
            f"(uid {os.getuid()})"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours, in a sticky /tmp: nobody can swap it under us
    return path


def private_file(mount_dir: PathLike, suffix: str) -> int:
    """An fd (read-write, created 0600 if missing) of this mount's file `<key>.<suffix>` in the
    private control directory. Symlinks are not followed; the file must be a regular one of
    ours."""
    path = socket_path(mount_dir)[: -len(".sock")] + "." + suffix
    ensure_control_dir()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise ImgfsError(f"refusing to use {path}: not a regular file owned by this user")
    return fd


class FileLock:
    """An exclusive flock on a private file, held for a `with` block: the kernel drops it when
    the holder dies, so a killed process never leaves it taken."""

    def __init__(self, mount_dir: PathLike, suffix: str) -> None:
        self._dir, self._suffix = mount_dir, suffix
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self._fd = private_file(self._dir, self._suffix)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def socket_path(mount_dir: PathLike) -> str:
    """The control socket of the mount at `mount_dir` (which need not be running). The one
    copy of this rule in Python: scripts and tests call this, not a hash of their own."""
    key = _fnv1a64(os.fsencode(normalize_dir(mount_dir)))
    return os.path.join(control_dir(), f"{key:016x}.sock")


def find_binary() -> str:
    """The `imgfs` executable to start daemons with.

    In order: $IMGFS_BIN (an explicit choice, e.g. the tests' fresh build); the binary installed
    with this package (the wheel puts it in this environment's scripts directory, so another
    `imgfs` earlier on PATH cannot shadow it); PATH; the build next to this package when it runs
    from a checkout (target/release, then target/debug).
    """
    env = os.environ.get("IMGFS_BIN")
    if env:
        return env
    for scripts in _own_scripts_dirs():
        candidate = os.path.join(scripts, "imgfs")
        if _executable(candidate):
            return candidate
    on_path = shutil.which("imgfs")
    if on_path:
        return on_path
    repo = Path(__file__).resolve().parents[2]
    for profile in ("release", "debug"):
        candidate = str(repo / "target" / profile / "imgfs")
        if _executable(candidate):
            return candidate
    raise ImgfsError(
        "cannot find the imgfs binary: install it with `pip install ./python` (binary and "
        "client in one) or `cargo install --path .`, or set IMGFS_BIN"
    )


def _own_scripts_dirs() -> list[str]:
    """Where an installer put this environment's commands: sysconfig's scripts directory (a
    venv, a system install), then the user scheme's (pip install --user)."""
    dirs = [sysconfig.get_path("scripts"), os.path.join(sys.prefix, "bin")]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    return [d for d in dict.fromkeys(dirs) if d]


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


class Connection:
    """One connection to a daemon; requests are serialized because answers carry no id."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def request(self, op: str, fds: Sequence[int] = (), **fields: Any) -> dict[str, Any]:
        """Send one request (with `fds` attached, if any) and return the answer without `ok`;
        raise the ImgfsError subclass of the answer's `kind`, with the daemon's message, when
        it refuses."""
        line = json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if fds:
                sent = socket.send_fds(self._sock, [line], list(fds))
                # the descriptors ride on the first bytes; a short send just needs the rest
                if sent < len(line):
                    self._sock.sendall(line[sent:])
            else:
                self._sock.sendall(line)
            answer = self._reader.readline()
        if not answer:
            raise ImgfsError("the imgfs daemon closed the connection")
        reply = json.loads(answer)
        if not isinstance(reply, dict):
            raise ImgfsError(f"the imgfs daemon answered with a non-object: {answer[:200]!r}")
        if not reply.pop("ok", False):
            raise from_answer(reply)
        return reply

    def close(self) -> None:
        self._reader.close()
        self._sock.close()
