"""A client of one imgfs mount: thin wrappers over the control protocol, plus starting and
stopping the daemon when no mount is running yet."""

from __future__ import annotations

import base64
import fcntl
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import shm
from ._control import (
    Connection, FileLock, ImgfsError, PathLike, default_dir, find_binary, normalize_dir,
    private_file, socket_path,
)

if TYPE_CHECKING:
    import nibabel as nib


class Mount:
    """A running imgfs mount at `dir` (default: $IMGFS_MOUNT, else the daemon's default).

    Connects to the mount if one answers there; otherwise starts one with `imgfs mount DIR`.
    Every process of a user shares one mount per directory: "is it running? else start it"
    runs under an exclusive lock in the private control directory, so processes that ask at
    once end with one mount. Each process using the mount holds a shared lock on it until it
    closes; `close()` (or the end of a `with` block) of the Mount that started it unmounts it
    unless another process still uses it, and then the last of those unmounts it. A mount
    started otherwise (`imgfs mount`) is left running.
    `binary` is the `imgfs` executable to start it with (default: `find_binary()`).
    """

    def __init__(self, dir: PathLike | None = None, binary: str | None = None) -> None:
        self.dir = normalize_dir(dir) if dir is not None else default_dir()
        self.owned = False
        self._bin = binary
        self._conn: Connection | None = None
        self._held = False
        sock = socket_path(self.dir)
        with FileLock(self.dir, "start"):
            try:
                self._conn = Connection(sock)
                self._conn.request("ping")
            except (OSError, ImgfsError):
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self._start()
                self._conn = Connection(sock)
                self.owned = True
                _mark_started(self.dir)
            _hold(self.dir)
            self._held = True

    def _start(self) -> None:
        if self._bin is None:
            self._bin = find_binary()
        # `imgfs mount` returns once the mount is live, so the socket can be used right away
        done = subprocess.run(
            [self._bin, "mount", self.dir], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise ImgfsError(
                f"imgfs mount {self.dir} failed (exit {done.returncode}): {done.stderr.strip()}"
            )

    def close(self) -> None:
        """Disconnect; unmount too if no other process uses the mount and it was started by
        this object, or by another client that has gone (see the class). Safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if not self._held:
            return
        self._held = False
        with FileLock(self.dir, "start"):
            alone, used_here = _release(self.dir)
            # the starter stops it for its process; a client-started mount whose starter has
            # gone is stopped by the last process to let go of it
            stop = alone and (self.owned or (not used_here and _started_by_client(self.dir)))
            self.owned = False
            if stop:
                _unmount(self._bin, self.dir)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mount({self.dir!r}{', owned' if self.owned else ''})"

    def request(self, op: str, fds: Sequence[int] = (), **fields: Any) -> dict[str, Any]:
        """Any protocol request; the answer without `ok`. Raises the ImgfsError subclass of the
        answer's error kind (imgfs.NameTaken, imgfs.UnknownName, ...) on refusal."""
        if self._conn is None:
            raise ImgfsError(f"mount {self.dir} is closed")
        return self._conn.request(op, fds=fds, **fields)

    # -- thin wrappers, one per op ----------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def add(self, path: PathLike, name: str | None = None) -> dict[str, Any]:
        """Serve the image file at `path` (lazily: only its header is read now); its summary."""
        fields: dict[str, Any] = {"path": os.path.abspath(os.fspath(path))}
        if name is not None:
            fields["name"] = name
        return self.request("add", **fields)

    def ls(self) -> list[dict[str, Any]]:
        """Every image's summary."""
        images: list[dict[str, Any]] = self.request("ls")["images"]
        return images

    def show(self, name: str) -> dict[str, Any]:
        """Summary plus every header field, the affine and the extensions."""
        return self.request("show", name=name)

    def path(self, name: str) -> str:
        """The file to hand a tool: the original while the image is clean, the mount path else."""
        return str(self.request("path", name=name)["path"])

    def set(self, name: str, **fields: Any) -> dict[str, Any]:
        """Header edits by nibabel's field names, applied in order, all or none."""
        pairs = [[k, _jsonable(v)] for k, v in fields.items()]
        return self.request("set", name=name, fields=pairs)

    def set_affine(self, name: str, affine: npt.ArrayLike) -> dict[str, Any]:
        return self.request("set_affine", name=name, affine=_jsonable(np.asarray(affine, float)))

    def mark(self, name: str, state: str) -> dict[str, Any]:
        """Override the state: 'clean' (serve the original) or 'dirty'."""
        return self.request("mark", name=name, state=state)

    def rm(self, name: str) -> None:
        self.request("rm", name=name)
        from .handoff import forget

        forget(self, name)

    def save(self, name: str, out: PathLike) -> str:
        """Write the image to `out` (format from its extension); the path written."""
        return str(self.request("save", name=name, out=os.path.abspath(os.fspath(out)))["path"])

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def load(self, name: str) -> nib.filebasedimages.FileBasedImage:
        """nibabel's image of `name` as served by the mount: nibabel maps the file, no copy."""
        import nibabel as nib

        return nib.load(self.show(name)["path"])

    def as_filename(self, img: nib.analyze.AnalyzeImage, keep: bool = False) -> str:
        """`imgfs.as_filename(img, mount=self, keep=keep)`."""
        from .handoff import as_filename

        return as_filename(img, mount=self, keep=keep)

    def put(
        self,
        name: str,
        header: bytes,
        affine: npt.ArrayLike,
        data: npt.ArrayLike,
        extensions: Iterable[tuple[int, bytes]] = (),
        replace: bool = False,
    ) -> dict[str, Any]:
        """Serve an image held by this process: `header` the raw NIfTI-1/2 header bytes,
        `extensions` (code, bytes) pairs, `data` an array of any order and byte order.

        The voxels go through a memfd the daemon maps. An array from `imgfs.empty`/`zeros`/
        `asarray` (or an F-contiguous native-order view into one) sends its own memfd, no copy,
        and turns copy-on-write for the caller (see imgfs.shm); any other array is copied once
        into a fresh memfd. Nothing of ours writes to the memfd after it is sent. Where the
        memfd can hold the served file whole (see `served_room`), it is sent `in_place`.
        """
        extensions = list(extensions)
        with wire_data(data, served_room(header, extensions)) as wire:
            return self.put_wire(name, header, affine, wire, extensions, replace)

    def put_wire(
        self,
        name: str,
        header: bytes,
        affine: npt.ArrayLike,
        wire: Wire,
        extensions: Iterable[tuple[int, bytes]] = (),
        replace: bool = False,
    ) -> dict[str, Any]:
        """`put` of data already in a memfd: `wire` from `wire_data`, reusable across attempts
        (the memfd is frozen)."""
        if wire.fd is None:
            raise ValueError("this Wire was closed: its memfd is gone")
        fields: dict[str, Any] = {}
        if wire.offset:
            fields["data_offset"] = wire.offset
        if wire.in_place:
            fields["in_place"] = True
        return self.request(
            "put",
            fds=[wire.fd],
            name=name,
            header=base64.b64encode(bytes(header)).decode("ascii"),
            affine=_jsonable(np.asarray(affine, float)),
            extensions=[
                {"code": int(code), "content": base64.b64encode(content).decode("ascii")}
                for code, content in extensions
            ],
            shape=[int(n) for n in wire.shape],
            dtype=_dtype_name(wire.dtype),
            replace=bool(replace),
            **fields,
        )


# -- one mount per node and user: who uses it, who started it -------------------------------

# mount dir -> [fd of its "users" file holding our shared flock, Mount objects using it, pid].
# One fd per process (flock belongs to the open file), shared by the Mount objects in it.
_holds: dict[str, list[int]] = {}
_holds_lock = threading.Lock()


def _hold(dir: str) -> None:
    """Count this process as a user of the mount (called under the start lock)."""
    with _holds_lock:
        h = _holds.get(dir)
        if h is None or h[2] != os.getpid():  # a forked child gets a lock of its own
            fd = private_file(dir, "users")
            fcntl.flock(fd, fcntl.LOCK_SH)
            h = _holds[dir] = [fd, 0, os.getpid()]
        h[1] += 1


def _release(dir: str) -> tuple[bool, bool]:
    """One Mount object of this process stops using the mount (called under the start lock);
    whether no other process uses it now, and whether other Mount objects of this one do."""
    with _holds_lock:
        h = _holds.get(dir)
        if h is None or h[2] != os.getpid():
            return False, False
        fd = h[0]
        h[1] -= 1
        try:
            # an exclusive lock is granted only if no other process holds a shared one
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        used_here = h[1] > 0
        if used_here:
            # a failed conversion may have dropped our lock: take it again (nobody can be
            # waiting for an exclusive one, as that is only tried under the start lock)
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            os.close(fd)
            del _holds[dir]
        return alone, used_here


def _mark_started(dir: str) -> None:
    """Record that a client started the mount now live at `dir`: its device number, which is
    new for every mount, so a later `imgfs mount` of the same directory is not taken for it."""
    fd = private_file(dir, "started")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.stat(dir).st_dev).encode())
    finally:
        os.close(fd)


def _started_by_client(dir: str) -> bool:
    try:
        fd = private_file(dir, "started")
        try:
            recorded = os.read(fd, 64).decode().strip()
        finally:
            os.close(fd)
        return os.path.ismount(dir) and recorded == str(os.stat(dir).st_dev)
    except (OSError, ImgfsError, UnicodeDecodeError):
        return False


def _unmount(binary: str | None, dir: str) -> None:
    done = subprocess.run(
        [binary or find_binary(), "unmount", dir], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise ImgfsError(f"imgfs unmount {dir} failed: {done.stderr.strip()}")


class Wire:
    """Voxels ready to send: a memfd (`fd`, ours to close), `offset` bytes in, of `shape` and
    native `dtype` in file order; `zero_copy` when the memfd is the caller's shared array;
    `in_place` when nothing follows the data and the `offset` bytes before them are free for
    the served header, so the daemon can make the memfd the served file."""

    def __init__(
        self,
        fd: int,
        offset: int,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        zero_copy: bool,
        in_place: bool = False,
    ) -> None:
        self.fd: int | None = fd
        self.offset, self.shape, self.dtype = offset, shape, dtype
        self.zero_copy = zero_copy
        self.in_place = in_place

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def served_room(header: bytes, extensions: Iterable[tuple[int, bytes]] = ()) -> int | None:
    """The bytes to leave before the data in a memfd for the daemon to write the served header
    and extensions into (a whole number of pages: the data then start at a page-aligned
    vox_offset, as NIfTI allows); None when that cannot be, for a header not in this machine's
    byte order (the served file keeps the header's order, the sent data are native), an
    Analyze header (it has no vox_offset to keep), and extensions that do not end at a page
    boundary (nibabel reads padding after them as one more extension, and fails)."""
    header = bytes(header)
    size = int.from_bytes(header[:4], sys.byteorder) if len(header) >= 4 else 0
    if size not in (348, 540) or (size == 348 and header[344:347] not in (b"n+1", b"ni1")):
        return None
    extensions = list(extensions)
    # the extension flag, then each extension padded to 16 bytes, as the daemon lays them out
    needed = size + 4 + sum((len(content) + 8 + 15) // 16 * 16 for _, content in extensions)
    room = -(-needed // shm.HEADER_ROOM) * shm.HEADER_ROOM
    return None if extensions and room != needed else room


def wire_data(data: npt.ArrayLike, room: int | None = None) -> Wire:
    """A Wire for `data`: its own memfd if it is an unsent shared array, else a fresh copy;
    with `room` (from `served_room`), laid out for the daemon to make it the served file where
    it can be (a copy always; a shared array when it is the whole array and the room fits)."""
    data = np.asarray(data)
    claimed = shm.claim(data)
    if claimed is not None:
        fd, offset, whole = claimed
        in_place = whole and room is not None and room == offset
        return Wire(fd, offset, data.shape, data.dtype, True, in_place)
    fd = shm.new_memfd("imgfs-put")
    try:
        _fill(fd, data, room or 0)
        shm.seal_size(fd)
    except BaseException:
        os.close(fd)
        raise
    return Wire(fd, room or 0, data.shape, data.dtype.newbyteorder("="), False, room is not None)


def _fill(fd: int, data: np.ndarray[Any, Any], at: int = 0) -> None:
    """Write `data` into the memfd `fd` from byte `at` (a multiple of the page size) on, in
    Fortran order and native byte order; the memfd ends with the data."""
    dtype = data.dtype.newbyteorder("=")
    nbytes = data.size * dtype.itemsize
    os.ftruncate(fd, at + nbytes)
    if data.flags.f_contiguous and data.dtype == dtype:
        # Already the file's layout: write() straight from the array. Measured on 512 MiB, this
        # takes 0.17 s against 0.4-0.5 s for a copy into a mmap of the memfd, whose cost is one
        # page fault per 4 KiB page (shmem gets no huge pages here). Two threads writing halves
        # were no faster: a write to a shmem file holds the inode lock, so they take turns.
        raw = data.reshape(-1, order="F").view(np.uint8).data
        done = 0
        while done < nbytes:
            done += os.pwrite(fd, raw[done:], at + done)
        return
    with mmap.mmap(fd, nbytes, offset=at) as shared:
        view = np.ndarray(data.shape, dtype=dtype, buffer=shared, order="F")
        # reorders and byte-swaps on the way, in one pass
        np.copyto(view, data, casting="equiv")
        del view  # the map cannot close while an array still exports it


def _dtype_name(dtype: np.dtype[Any]) -> str:
    """The daemon's name for a numpy dtype (NIfTI's RGB types are structured in nibabel)."""
    if dtype.fields is not None:
        if dtype.itemsize == 3:
            return "rgb24"
        if dtype.itemsize == 4:
            return "rgba32"
        raise ImgfsError(f"unsupported structured dtype {dtype}")
    return dtype.name


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
