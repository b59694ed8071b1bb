"""A client of one imgfs mount: thin wrappers over the control protocol, plus starting and
stopping the daemon when no mount is running yet."""

from __future__ import annotations

import base64
import mmap
import os
import subprocess
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import shm
from ._control import (
    Connection, ImgfsError, PathLike, default_dir, find_binary, normalize_dir, socket_path,
)

if TYPE_CHECKING:
    import nibabel as nib


class Mount:
    """A running imgfs mount at `dir` (default: $IMGFS_MOUNT, else the daemon's default).

    Connects to the mount if one answers there; otherwise starts one with `imgfs mount DIR` and
    stops it again on `close()` (or at the end of a `with` block), so a script that started its
    own mount leaves nothing behind. A mount that was already running is left running.
    `binary` is the `imgfs` executable to start it with (default: `find_binary()`).
    """

    def __init__(self, dir: PathLike | None = None, binary: str | None = None) -> None:
        self.dir = normalize_dir(dir) if dir is not None else default_dir()
        self.owned = False
        self._bin = binary
        self._conn: Connection | None = None
        sock = socket_path(self.dir)
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
        """Disconnect; unmount too if this object started the mount. Safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.owned:
            self.owned = False
            assert self._bin is not None  # set by _start, which made the mount ours
            done = subprocess.run(
                [self._bin, "unmount", self.dir], capture_output=True, text=True, timeout=120
            )
            if done.returncode != 0:
                raise ImgfsError(f"imgfs unmount {self.dir} failed: {done.stderr.strip()}")

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
        into a fresh memfd. Nothing of ours writes to the memfd after it is sent.
        """
        with wire_data(data) as wire:
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


class Wire:
    """Voxels ready to send: a memfd (`fd`, ours to close), `offset` bytes in, of `shape` and
    native `dtype` in file order; `zero_copy` when the memfd is the caller's shared array."""

    def __init__(
        self, fd: int, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any], zero_copy: bool
    ) -> None:
        self.fd: int | None = fd
        self.offset, self.shape, self.dtype = offset, shape, dtype
        self.zero_copy = zero_copy

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wire_data(data: npt.ArrayLike) -> Wire:
    """A Wire for `data`: its own memfd if it is an unsent shared array, else a fresh copy."""
    data = np.asarray(data)
    claimed = shm.claim(data)
    if claimed is not None:
        fd, offset = claimed
        return Wire(fd, offset, data.shape, data.dtype, True)
    fd = shm.new_memfd("imgfs-put")
    try:
        _fill(fd, data)
        shm.seal_size(fd)
    except BaseException:
        os.close(fd)
        raise
    return Wire(fd, 0, data.shape, data.dtype.newbyteorder("="), False)


def _fill(fd: int, data: np.ndarray[Any, Any]) -> None:
    """Write `data` into the memfd `fd` in Fortran order and native byte order."""
    dtype = data.dtype.newbyteorder("=")
    nbytes = data.size * dtype.itemsize
    os.ftruncate(fd, nbytes)
    if data.flags.f_contiguous and data.dtype == dtype:
        # Already the file's layout: write() straight from the array. Measured on 512 MiB, this
        # takes 0.17 s against 0.4-0.5 s for a copy into a mmap of the memfd, whose cost is one
        # page fault per 4 KiB page (shmem gets no huge pages here). Two threads writing halves
        # were no faster: a write to a shmem file holds the inode lock, so they take turns.
        raw = data.reshape(-1, order="F").view(np.uint8).data
        done = 0
        while done < nbytes:
            done += os.pwrite(fd, raw[done:], done)
        return
    with mmap.mmap(fd, nbytes) as shared:
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
