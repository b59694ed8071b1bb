"""Arrays in shared memory that can be handed to the daemon without copying.

`empty`, `zeros` and `asarray` give numpy arrays whose buffer is a MAP_SHARED mapping of a memfd,
in file (Fortran) order. A registry maps the buffer to its memfd, so that a handoff of such an
array (or of an F-contiguous, native-order view into it) sends that memfd itself: the daemon maps
the same pages and nothing is copied.

Snapshot: the daemon must keep serving what was handed over, and the caller keeps a writable
array. So right before the memfd is sent, the caller's mapping is replaced, at the same address,
by a MAP_PRIVATE (copy-on-write) mapping of the same memfd: the contents stay, reading costs
nothing, and the caller's later writes land in private pages while the memfd is never written
again. The buffer then leaves the registry; later handoffs of it copy, like any other array.

Served layout: the array is mapped from the memfd's second page on; the first page
(`HEADER_ROOM`), never mapped here, is left for the daemon to write the served header and
extensions into. A whole array handed over that way makes its memfd the served file itself
(header, extensions, data at a page-aligned vox_offset), passed through to readers with no copy.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import threading
import weakref
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)

# Bytes in front of a shared array's data in its memfd, for the served header (see above).
HEADER_ROOM = mmap.ALLOCATIONGRANULARITY


class _Buffer:
    """One mapping of one memfd, `length` bytes at `addr`; `fd` is None once handed over."""

    def __init__(self, fd: int, addr: int, length: int) -> None:
        self.fd: int | None = fd
        self.addr = addr
        self.length = length
        self.lock = threading.Lock()


# owner object (the ctypes array numpy sees as the buffer) -> _Buffer. Keyed by the object, not
# the address: an address is reused as soon as a mapping goes away.
_registry: weakref.WeakKeyDictionary[Any, _Buffer] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _map(fd: int, length: int, flags: int, addr: int | None = None) -> int:
    got = _libc.mmap(addr, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, HEADER_ROOM)
    if got == _MAP_FAILED or got is None:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of the shared array failed: {os.strerror(err)}")
    return int(got)


def _release(addr: int, length: int, buf: _Buffer) -> None:
    _libc.munmap(addr, length)
    fd, buf.fd = buf.fd, None
    if fd is not None:
        os.close(fd)


def _wrap(
    fd: int,
    nbytes: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    order: Literal["C", "F"],
) -> np.ndarray[Any, Any]:
    """A numpy array on a fresh MAP_SHARED mapping of the memfd `fd` (which it takes over),
    from its byte HEADER_ROOM on."""
    length = max(nbytes, 1)  # mmap refuses 0 bytes
    try:
        addr = _map(fd, length, mmap.MAP_SHARED)
    except BaseException:
        os.close(fd)
        raise
    # Huge pages make filling a large array cheaper (512x fewer faults), but shmem gets them only
    # where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows (`advise` needs this call;
    # `never`, a common default, makes it a no-op). Best effort: an error changes nothing.
    _libc.madvise(addr, length, getattr(mmap, "MADV_HUGEPAGE", 14))
    buf = _Buffer(fd, addr, length)
    # a ctypes array on the mapping exports it to numpy; its own type so that it can carry a
    # finalizer, which unmaps (and closes the memfd) once the last array using it is gone
    # (hashable by identity: the registry is keyed by it)
    kind: Any = type("SharedImageBuffer", (ctypes.c_char * length,), {"__hash__": object.__hash__})
    owner = kind.from_address(addr)
    done = weakref.finalize(owner, _release, addr, length, buf)
    # not at interpreter exit: an array still reachable then must stay mapped (exit unmaps all)
    done.atexit = False
    with _registry_lock:
        _registry[owner] = buf
    return np.ndarray(shape, dtype=dtype, buffer=owner, order=order)


def new_memfd(name: str) -> int:
    """A memfd that can be sealed: the daemon maps only memfds sealed against shrinking."""
    return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def seal_size(fd: int) -> None:
    """Seal `fd` against shrinking: the daemon refuses a memfd without this seal, as a file that
    shrinks under its mapping would kill it. Growing stays allowed (it harms no mapping)."""
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)


def _memfd(nbytes: int, name: str = "imgfs-array") -> int:
    fd = new_memfd(name)
    try:
        os.ftruncate(fd, HEADER_ROOM + nbytes)
        seal_size(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _shape(shape: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(int(n) for n in np.atleast_1d(np.asarray(shape)))


def empty(
    shape: int | tuple[int, ...] | list[int],
    dtype: npt.DTypeLike = np.float64,
    order: Literal["C", "F"] = "F",
) -> np.ndarray[Any, Any]:
    """A new array in shared memory (contents zero, as a fresh memfd is). Hand an image built on
    it to `as_filename` and the daemon maps these very pages: no copy. Only Fortran order (the
    file order) in native byte order goes without a copy."""
    if order not in ("F", "C"):
        raise ValueError(f"order must be 'F' or 'C', not {order!r}")
    shape, dtype = _shape(shape), np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("object arrays cannot live in shared memory")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _wrap(_memfd(nbytes), nbytes, shape, dtype, order)


def zeros(
    shape: int | tuple[int, ...] | list[int],
    dtype: npt.DTypeLike = np.float64,
    order: Literal["C", "F"] = "F",
) -> np.ndarray[Any, Any]:
    """Same as `empty`: a fresh memfd reads as zeros."""
    return empty(shape, dtype, order)


def asarray(a: npt.ArrayLike, dtype: npt.DTypeLike | None = None) -> np.ndarray[Any, Any]:
    """`a` copied once into shared memory, in Fortran order and native byte order; `a` itself if
    it is already a shared array in that layout (and `dtype` matches)."""
    a = np.asanyarray(a)
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    dtype = dtype.newbyteorder("=") if dtype.byteorder not in ("|", "=") else dtype
    if a.dtype == dtype and lookup(a) is not None:
        return a
    if dtype.hasobject:
        raise TypeError("object arrays cannot live in shared memory")
    from .mount import _fill  # the copy route's writer: pwrite, cheaper than faulting pages in

    nbytes = a.size * dtype.itemsize
    fd = _memfd(nbytes)
    try:
        _fill(fd, a if a.dtype == dtype else a.astype(dtype, order="F"), HEADER_ROOM)
    except BaseException:
        os.close(fd)
        raise
    return _wrap(fd, nbytes, a.shape, dtype, "F")


def _owner(a: np.ndarray[Any, Any]) -> Any:
    """The object that owns `a`'s memory (numpy keeps views' base pointing at it)."""
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base


def _native(dtype: np.dtype[Any]) -> bool:
    if dtype.fields is None:
        return dtype.isnative
    return all(_native(f[0]) for f in dtype.fields.values())


def lookup(a: object) -> tuple[_Buffer, int] | None:
    """(buffer, byte offset in it) if `a` can be sent as it lies: an array (or view) in a
    shared buffer not handed over yet, F-contiguous, native byte order, 8-byte aligned offset
    (the protocol's `data_offset`, less HEADER_ROOM). None otherwise."""
    if not isinstance(a, np.ndarray) or a.size == 0:
        return None
    owner = _owner(a)
    try:
        buf = _registry.get(owner)
    except TypeError:  # unhashable or not weak-referenceable: not ours
        return None
    if buf is None or buf.fd is None:
        return None
    if not a.flags.f_contiguous or not _native(a.dtype):
        return None
    offset = a.ctypes.data - buf.addr
    if offset < 0 or offset % 8 or offset + a.nbytes > buf.length:
        return None
    return buf, offset


def claim(a: object) -> tuple[int, int, bool] | None:
    """For sending `a` without a copy: (memfd, byte offset of the data in it, whether `a` is
    the whole buffer), the memfd the caller's to close; None if `a` must be copied. The array's
    mapping turns copy-on-write first, so the memfd keeps exactly the current contents whatever
    the caller writes from now on, and the buffer leaves the registry (one zero-copy handoff per
    buffer)."""
    found = lookup(a)
    if found is None:
        return None
    buf, offset = found
    with buf.lock:
        fd = buf.fd
        if fd is None:  # another thread claimed it meanwhile
            return None
        # Same range, same memfd, private: the pages read the same, writes stop reaching the
        # memfd. The replacement is atomic (MAP_FIXED), so no access ever sees a hole.
        _map(fd, buf.length, mmap.MAP_PRIVATE | _MAP_FIXED, buf.addr)
        buf.fd = None
    whole = offset == 0 and isinstance(a, np.ndarray) and a.nbytes == buf.length
    return fd, HEADER_ROOM + offset, whole


def is_shared(a: object) -> bool:
    """Whether handing `a` over now goes without a copy."""
    return lookup(a) is not None


def memfd_of(a: object) -> int | None:
    """The memfd behind a shared array not handed over yet (still ours: do not close), or None."""
    found = lookup(a)
    return None if found is None else found[0].fd
