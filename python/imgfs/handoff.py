"""`as_filename`: a file name a command-line tool can read for a nibabel image, without writing
a temporary file.

An image that still is exactly its file on disk is handed over as that file. Anything else goes
to the imgfs daemon, which serves it as a file in the mount. nibabel does not track changes, so
"still exactly its file" is decided here, conservatively: the header, the affine and the data the
user sees must equal the file's, and the file must not have changed since we first saw the image.

What this process hands to a mount it did not start is removed from that mount when the process
exits normally (an `atexit` hook), unless the handoff said `keep=True`. A process killed by a
signal it does not handle (SIGKILL, or SIGTERM without a handler) runs no hook, so its images
stay until `imgfs rm` or the mount's end; a mount the process started itself goes away with it
in any case.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import threading
import weakref
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.analyze import AnalyzeImage
from nibabel.arrayproxy import ArrayProxy
from nibabel.filebasedimages import FileBasedImage

from . import recipe
from ._control import Connection, PathLike, default_dir, normalize_dir, socket_path
from .errors import ImgfsError, NameTaken
from .mount import Mount, Wire, served_room, wire_data

# what goes over the wire: header bytes, affine, extensions, data, dtype to convert to afterwards
_WireParts = tuple[
    bytes, np.ndarray[Any, Any], list[tuple[int, bytes]], np.ndarray[Any, Any], np.dtype[Any] | None
]
# one file's identity: (kind, path, st_dev, st_ino, st_size, st_mtime_ns), or (kind, path, None)
_Identity = tuple[tuple[Any, ...], ...]


class _Seen:
    """What we know about one image object: nibabel keeps none of it."""

    def __init__(self, identity: _Identity | None) -> None:
        self.identity = identity  # the files' identity when we first saw the image
        self.dirty_forever = False  # its file changed once: the data read since may be mixed
        self.names: dict[str, str] = {}  # mount dir -> the name it is served under there


# Keyed by the image itself so the record dies with it and never pins memory.
_seen: weakref.WeakKeyDictionary[FileBasedImage, _Seen] = weakref.WeakKeyDictionary()
_counter = itertools.count(1)
_mounts: dict[str, Mount] = {}
_mounts_lock = threading.Lock()


def load(path: PathLike, **kwargs: Any) -> FileBasedImage:
    """`nib.load(path)`, recording the file's identity right away, so that a change to the file
    between loading and the first `as_filename` is noticed too."""
    img = nib.load(path, **kwargs)
    _state(img)
    return img


def as_filename(
    img: AnalyzeImage, mount: Mount | PathLike | None = None, keep: bool = False
) -> str:
    """A path from which any tool reads `img` as the user sees it now.

    The image's own file when nothing differs from it; otherwise the image is handed to the
    mount (`mount`: a Mount, a mount directory, or None for the default one, started if needed)
    and the path of its file there is returned. Handing the same image object over again
    replaces its earlier version under the same name. The image is removed from the mount when
    this process exits, unless `keep` is true (see the module's doc for the limits).
    """
    if not isinstance(img, AnalyzeImage):  # NIfTI-1/2, Analyze and SPM all derive from it
        raise TypeError(f"imgfs handles NIfTI and Analyze images, not {type(img).__name__}")
    rec = recipe.received(img)
    if rec is not None:
        path = recipe.filename(img, rec, mount, keep)
        if path is not None:
            return path
        # changed here so that its data must go: from now on an image like any other
        recipe.forget(img)
    memo: dict[str, Any] = {}
    own = _clean_filename(img, memo)
    if own is not None:
        return own
    return str(put(img, mount, keep=keep, _memo=memo)["path"])


def put(
    img: AnalyzeImage,
    mount: Mount | PathLike | None = None,
    keep: bool = False,
    _memo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send `img` (header, affine, extensions, data) to the mount, whatever its state; its
    summary there. Data in an `imgfs.empty`/`zeros`/`asarray` array go without a copy (once:
    the array turns copy-on-write, so the mount keeps what was sent); others are copied.
    Removed from the mount when this process exits, unless `keep` is true."""
    m = _mount(mount)
    state = _state(img)
    header, affine, extensions, data, retype = _wire_parts(img, {} if _memo is None else _memo)
    name = state.names.get(m.dir)
    # one memfd for every attempt: frozen once made, so a retry sends the same snapshot; laid
    # out as the served file where it can be, so the mount serves it with no copy
    with wire_data(data, served_room(header, extensions)) as wire:
        if name is not None:
            summary = m.put_wire(name, header, affine, wire, extensions, replace=True)
        else:
            name, summary = _put_new(m, img, header, affine, wire, extensions)
            state.names[m.dir] = name
    _remove_at_exit(m, name, not keep)
    if retype is not None:
        # the daemon converts with nibabel's scaling rules, as nib.save would
        summary = m.set(name, datatype=retype.name)
    return summary


def _put_new(
    m: Mount,
    img: AnalyzeImage,
    header: bytes,
    affine: np.ndarray[Any, Any],
    wire: Wire,
    extensions: list[tuple[int, bytes]],
) -> tuple[str, dict[str, Any]]:
    """Insert under a fresh name; names may be taken by other clients, so retry on a clash."""
    stem = _stem(img)
    for _ in range(1000):
        name = f"{stem}-{next(_counter)}"
        try:
            return name, m.put_wire(name, header, affine, wire, extensions, replace=False)
        except ImgfsError as e:
            if _clash(m, name, e):
                continue
            raise
    raise ImgfsError(f"no free name for {stem} in {m.dir}")


def _clash(m: Mount, name: str, e: ImgfsError) -> bool:
    """Was `e`, the answer to inserting `name`, a name clash? Known by its kind; a daemon that
    sends no kinds is asked whether the name exists (processes sharing a node's mount all
    count from 1, so clashes are ordinary there)."""
    if isinstance(e, NameTaken):
        return True
    if e.kind is not None:
        return False
    try:
        m.show(name)
    except ImgfsError:
        return False
    return True


# -- removal at exit ------------------------------------------------------------------------

# socket path -> names this process put there and removes at exit. By socket, not Mount: the
# Mount object may be closed by then, and a new connection is all `rm` needs.
_handed: dict[str, set[str]] = {}
_handed_lock = threading.Lock()
_hook_pid: int | None = None  # the process whose exit removes them (not a forked child)


def _remove_at_exit(m: Mount, name: str, remove: bool) -> None:
    global _hook_pid
    sock = socket_path(m.dir)
    with _handed_lock:
        names = _handed.setdefault(sock, set())
        if remove:
            names.add(name)
        else:
            names.discard(name)
        if _hook_pid != os.getpid():
            _hook_pid = os.getpid()
            atexit.register(_remove_handed)


def forget(m: Mount, name: str) -> None:
    """`name` left the mount by other means (`Mount.rm`): nothing to remove at exit; the name
    may be someone else's by then."""
    with _handed_lock:
        _handed.get(socket_path(m.dir), set()).discard(name)


def remove_handed(m: Mount) -> None:
    """Remove now what this process handed to `m` to be removed at exit (a Dask worker's
    teardown: the worker process may live on)."""
    sock = socket_path(m.dir)
    with _handed_lock:
        names = _handed.pop(sock, set())
    _remove({sock: sorted(names)})


def drop_mount(m: Mount) -> None:
    """Stop reusing `m` for `as_filename` calls without `mount=`."""
    with _mounts_lock:
        if _mounts.get(m.dir) is m:
            del _mounts[m.dir]


def _remove_handed() -> None:
    """The atexit hook: best effort, each mount and name on its own; a mount that went away
    took its images with it."""
    if _hook_pid != os.getpid():  # a forked child exiting: the images are its parent's
        return
    with _handed_lock:
        todo = {sock: sorted(names) for sock, names in _handed.items() if names}
        _handed.clear()
    _remove(todo)


def _remove(todo: dict[str, list[str]]) -> None:
    for sock, names in todo.items():
        try:
            conn = Connection(sock)
        except OSError:
            continue
        try:
            for name in names:
                try:
                    conn.request("rm", name=name)
                except ImgfsError:  # removed or replaced meanwhile: nothing of ours left
                    pass
        except OSError:
            pass
        finally:
            conn.close()


def _stem(img: AnalyzeImage) -> str:
    fn = img.get_filename()
    if not fn:
        return "img"
    base = os.path.basename(fn)
    for ext in (".gz", ".bz2", ".zst", ".nii", ".img", ".hdr"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".")
    return base or "img"


def _mount(mount: Mount | PathLike | None) -> Mount:
    if isinstance(mount, Mount):
        return mount
    key = normalize_dir(mount) if mount is not None else default_dir()
    with _mounts_lock:
        m = _mounts.get(key)
        if m is not None:
            try:
                m.ping()
                return m
            except (OSError, ImgfsError):  # unmounted since: start or attach afresh
                pass
        m = _mounts[key] = Mount(key)
        # a mount we started lives as long as this process, not longer
        atexit.register(m.close)
        return m


# -- is the image still its file? -----------------------------------------------------------


def _identity(img: FileBasedImage) -> _Identity | None:
    """(kind, path, st_dev, st_ino, st_size, st_mtime_ns) of each file of the image; a missing
    file counts too, as an SPM .mat appearing later changes the affine."""
    files: list[tuple[Any, ...]] = []
    for kind, holder in sorted(img.file_map.items()):
        fn = holder.filename
        if fn is None:
            return None  # a file object: nothing on disk to compare with
        try:
            st = os.stat(fn)
            files.append((kind, os.path.abspath(fn), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            files.append((kind, os.path.abspath(fn), None))
    return tuple(files)


def _state(img: FileBasedImage) -> _Seen:
    state = _seen.get(img)
    if state is None:
        state = _seen[img] = _Seen(_identity(img) if img.get_filename() else None)
    return state


def _clean_filename(img: AnalyzeImage, memo: dict[str, Any]) -> str | None:
    """The image's own file name if reading that file gives exactly what the user sees."""
    fn = img.get_filename()
    state = _state(img)
    if not fn or state.identity is None or state.dirty_forever:
        return None
    if _identity(img) != state.identity or not os.path.exists(fn):
        state.dirty_forever = True
        return None
    proxy = img.dataobj
    # an ndarray dataobj, or a proxy onto another file, is not the file's data
    if not isinstance(proxy, ArrayProxy) or not isinstance(proxy.file_like, str):
        return None
    if os.path.abspath(proxy.file_like) != os.path.abspath(str(img.file_map["image"].filename)):
        return None
    try:
        disk = type(img).from_filename(fn)
    except Exception:
        return None
    if not _same_header(img, disk) or not np.array_equal(img.affine, disk.affine):
        return None
    cache = _fdata_cache(img)
    if cache is not None and not _cache_matches(img, cache, memo):
        return None
    return str(fn)


def _fdata_cache(img: AnalyzeImage) -> np.ndarray[Any, Any] | None:
    """The array `get_fdata()` cached, which the user may have written to; None if there is none.

    nibabel's public API tells when there can be none (`in_memory` is false) but gives a cache
    out only through `get_fdata(caching="unchanged", dtype=...)`, which for a dtype other than
    the cache's silently computes a fresh array instead: this code could not tell it from the
    cache, and would take a written-to float32 cache for an unchanged image. So the attribute
    itself is read, after the public check."""
    if not img.in_memory:
        return None
    cache = getattr(img, "_fdata_cache", None)
    return cache if isinstance(cache, np.ndarray) else None


def _same_header(img: AnalyzeImage, disk: AnalyzeImage) -> bool:
    """Field by field, except those nibabel consumes at load (offset, scaling): the header
    keeps them reset to 0/NaN, and their real values live in the proxy."""
    a, b = img.header.copy(), disk.header.copy()
    for field in ("vox_offset", "scl_slope", "scl_inter"):
        if field in b:
            a[field] = b[field]
    if a.binaryblock != b.binaryblock:
        return False
    if getattr(a, "extensions", None) != getattr(b, "extensions", None):
        return False
    mine, theirs = img.dataobj, disk.dataobj
    if not isinstance(mine, ArrayProxy) or not isinstance(theirs, ArrayProxy):
        return False
    return (mine.slope, mine.inter) == (theirs.slope, theirs.inter)


def _cache_matches(
    img: AnalyzeImage, cache: np.ndarray[Any, Any], memo: dict[str, Any]
) -> bool:
    """Has the user left the get_fdata() cache as read? nibabel cannot tell a cache that was
    only read from one written to, and sending every read image would defeat the point; so
    compare values, treating NaN as equal to NaN (a NaN in the file stays NaN). `memo` keeps
    the answer for one as_filename call, as the comparison reads all the data."""
    if "cache_matches" in memo:
        return bool(memo["cache_matches"])
    fresh = np.asanyarray(img.dataobj, dtype=cache.dtype)
    same = cache.shape == fresh.shape and np.array_equal(cache, fresh, equal_nan=_has_nan(cache))
    memo["cache_matches"] = same
    return same


def _has_nan(a: np.ndarray[Any, Any]) -> bool:
    return a.dtype.kind in "fc"


# -- what goes over the wire ----------------------------------------------------------------


def _wire_parts(img: AnalyzeImage, memo: dict[str, Any]) -> _WireParts:
    """(header bytes, affine, extensions, data, dtype to convert to afterwards or None).

    The data are what the user sees: a written-to fdata cache as itself; a file's data as the
    stored numbers plus the proxy's scaling (smaller than floats, and exactly what nib.save would
    write); an in-memory array in its own type, converted by the daemon when the image asks for
    another on-disk type.
    """
    img.update_header()
    hdr = img.header
    # NIfTI-2 headers derive from NIfTI-1; Analyze/SPM become NIfTI-1, the daemon's wire format
    hdr = hdr.copy() if isinstance(hdr, nib.Nifti1Header) else nib.Nifti1Header.from_header(hdr)
    hdr["magic"] = hdr.single_magic  # served as one .nii file, whatever the original was
    affine = img.affine if img.affine is not None else hdr.get_best_affine()

    cache = _fdata_cache(img)
    if cache is not None and not _cache_matches(img, cache, memo):
        data = cache
        hdr.set_slope_inter(None, None)
    elif isinstance(img.dataobj, ArrayProxy):
        data = img.dataobj.get_unscaled()
        hdr.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    else:
        data = np.asanyarray(img.dataobj)
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        elif data.dtype == np.float16:
            data = data.astype(np.float32)
        hdr.set_slope_inter(None, None)
    # the type to store is the header's (set_data_dtype), whatever the sent numbers' type:
    # the daemon converts them with nibabel's scaling rules, as to_filename would
    # (a written-to fdata cache excepted: nibabel would not save it, and its values go as sent)
    wanted = np.dtype(img.get_data_dtype())
    retype = None
    if data is not cache and wanted.newbyteorder("=") != data.dtype.newbyteorder("="):
        retype = wanted
    hdr.set_data_dtype(data.dtype)
    pixdim = hdr["pixdim"].copy()
    hdr.set_data_shape(data.shape)
    hdr["pixdim"] = pixdim  # set_data_shape resets the unused slots; to_filename keeps them
    # `content` is the extension's raw bytes (nibabel >= 5.2, required by pyproject.toml)
    extensions = [(int(e.get_code()), bytes(e.content)) for e in getattr(hdr, "extensions", ())]
    return hdr.binaryblock, affine, extensions, data, retype
