"""The control protocol's plumbing: where a mount's socket lives, and one JSON line each way.

Everything here follows docs/PROTOCOL.md; the socket's name is derived from the mount directory
so that any client finds the same daemon without a registry.
"""

import json
import os
import shutil
import socket
import threading
from pathlib import Path


class ImgfsError(Exception):
    """The daemon refused a request (the message is the daemon's), or no mount could be reached."""


def normalize_dir(path):
    """Absolute and lexically normalized, without following symlinks: the daemon hashes exactly
    this text, so resolving a symlink here would find a different socket."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _runtime_dir():
    return os.environ.get("XDG_RUNTIME_DIR") or None


def default_dir():
    """The mount directory used when none is given: $IMGFS_MOUNT, else the daemon's default."""
    env = os.environ.get("IMGFS_MOUNT")
    if env:
        return normalize_dir(env)
    run = _runtime_dir()
    return os.path.join(run, "imgfs") if run else f"/tmp/imgfs-{os.getuid()}"


def control_dir():
    run = _runtime_dir()
    return os.path.join(run, "imgfs-control") if run else f"/tmp/imgfs-control-{os.getuid()}"


def _fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def socket_path(mount_dir):
    """The control socket of the mount at `mount_dir` (which need not be running)."""
    key = _fnv1a64(os.fsencode(normalize_dir(mount_dir)))
    return os.path.join(control_dir(), f"{key:016x}.sock")


def find_binary():
    """The `imgfs` executable: $IMGFS_BIN, else on PATH, else the build next to this package
    (an editable install inside the repository), so tests work without installing the daemon."""
    env = os.environ.get("IMGFS_BIN")
    if env:
        return env
    on_path = shutil.which("imgfs")
    if on_path:
        return on_path
    repo = Path(__file__).resolve().parents[2]
    for profile in ("release", "debug"):
        candidate = repo / "target" / profile / "imgfs"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ImgfsError(
        "cannot find the imgfs binary: set IMGFS_BIN, put imgfs on PATH, or build the repository"
    )


class Connection:
    """One connection to a daemon; requests are serialized because answers carry no id."""

    def __init__(self, path):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def request(self, op, fds=(), **fields):
        """Send one request (with `fds` attached, if any) and return the answer without `ok`;
        raise ImgfsError with the daemon's message when it refuses."""
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
        if not reply.pop("ok", False):
            raise ImgfsError(reply.get("error", "unknown error"))
        return reply

    def close(self):
        self._reader.close()
        self._sock.close()
