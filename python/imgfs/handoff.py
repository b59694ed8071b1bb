"""`as_filename`: a file name a command-line tool can read for a nibabel image, without writing
a temporary file.

An image that still is exactly its file on disk is handed over as that file. Anything else goes
to the imgfs daemon, which serves it as a file in the mount. nibabel does not track changes, so
"still exactly its file" is decided here, conservatively: the header, the affine and the data the
user sees must equal the file's, and the file must not have changed since we first saw the image.
"""

import atexit
import itertools
import os
import re
import threading
import weakref

import nibabel as nib
import numpy as np
from nibabel.analyze import AnalyzeImage
from nibabel.arrayproxy import ArrayProxy

from ._control import ImgfsError, default_dir, normalize_dir
from .mount import Mount, wire_data


class _Seen:
    """What we know about one image object: nibabel keeps none of it."""

    def __init__(self, identity):
        self.identity = identity  # the files' identity when we first saw the image
        self.dirty_forever = False  # its file changed once: the data read since may be mixed
        self.names = {}  # mount dir -> the name this image is served under there


# Keyed by the image itself so the record dies with it and never pins memory.
_seen = weakref.WeakKeyDictionary()
_counter = itertools.count(1)
_mounts = {}
_mounts_lock = threading.Lock()


def load(path, **kwargs):
    """`nib.load(path)`, recording the file's identity right away, so that a change to the file
    between loading and the first `as_filename` is noticed too."""
    img = nib.load(path, **kwargs)
    _state(img)
    return img


def as_filename(img, mount=None):
    """A path from which any tool reads `img` as the user sees it now.

    The image's own file when nothing differs from it; otherwise the image is handed to the
    mount (`mount`: a Mount, a mount directory, or None for the default one, started if needed)
    and the path of its file there is returned. Handing the same image object over again
    replaces its earlier version under the same name.
    """
    if not isinstance(img, AnalyzeImage):  # NIfTI-1/2, Analyze and SPM all derive from it
        raise TypeError(f"imgfs handles NIfTI and Analyze images, not {type(img).__name__}")
    memo = {}
    own = _clean_filename(img, memo)
    if own is not None:
        return own
    return put(img, mount, _memo=memo)["path"]


def put(img, mount=None, _memo=None):
    """Send `img` (header, affine, extensions, data) to the mount, whatever its state; its
    summary there. Data in an `imgfs.empty`/`zeros`/`asarray` array go without a copy (once:
    the array turns copy-on-write, so the mount keeps what was sent); others are copied."""
    m = _mount(mount)
    state = _state(img)
    header, affine, extensions, data, retype = _wire_parts(img, {} if _memo is None else _memo)
    name = state.names.get(m.dir)
    # one memfd for every attempt: frozen once made, so a retry sends the same snapshot
    with wire_data(data) as wire:
        if name is not None:
            summary = m.put_wire(name, header, affine, wire, extensions, replace=True)
        else:
            name, summary = _put_new(m, img, header, affine, wire, extensions)
            state.names[m.dir] = name
    if retype is not None:
        # the daemon converts with nibabel's scaling rules, as nib.save would
        summary = m.set(name, datatype=retype.name)
    return summary


def _put_new(m, img, header, affine, wire, extensions):
    """Insert under a fresh name; names may be taken by other clients, so retry on a clash."""
    stem = _stem(img)
    for _ in range(1000):
        name = f"{stem}-{next(_counter)}"
        try:
            return name, m.put_wire(name, header, affine, wire, extensions, replace=False)
        except ImgfsError as e:
            if "exists already" not in str(e):
                raise
    raise ImgfsError(f"no free name for {stem} in {m.dir}")


def _stem(img):
    fn = img.get_filename()
    if not fn:
        return "img"
    base = os.path.basename(fn)
    for ext in (".gz", ".bz2", ".zst", ".nii", ".img", ".hdr"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".")
    return base or "img"


def _mount(mount):
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


def _identity(img):
    """(kind, path, st_dev, st_ino, st_size, st_mtime_ns) of each file of the image; a missing
    file counts too, as an SPM .mat appearing later changes the affine."""
    files = []
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


def _state(img):
    state = _seen.get(img)
    if state is None:
        state = _seen[img] = _Seen(_identity(img) if img.get_filename() else None)
    return state


def _clean_filename(img, memo):
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
    if os.path.abspath(proxy.file_like) != os.path.abspath(img.file_map["image"].filename):
        return None
    try:
        disk = type(img).from_filename(fn)
    except Exception:
        return None
    if not _same_header(img, disk) or not np.array_equal(img.affine, disk.affine):
        return None
    cache = getattr(img, "_fdata_cache", None)
    if cache is not None and not _cache_matches(img, cache, memo):
        return None
    return fn


def _same_header(img, disk):
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
    return (mine.slope, mine.inter) == (theirs.slope, theirs.inter)


def _cache_matches(img, cache, memo):
    """Has the user left the get_fdata() cache as read? nibabel cannot tell a cache that was
    only read from one written to, and sending every read image would defeat the point; so
    compare values, treating NaN as equal to NaN (a NaN in the file stays NaN). `memo` keeps
    the answer for one as_filename call, as the comparison reads all the data."""
    if "cache_matches" in memo:
        return memo["cache_matches"]
    fresh = np.asanyarray(img.dataobj, dtype=cache.dtype)
    same = cache.shape == fresh.shape and np.array_equal(cache, fresh, equal_nan=_has_nan(cache))
    memo["cache_matches"] = same
    return same


def _has_nan(a):
    return a.dtype.kind in "fc"


# -- what goes over the wire ----------------------------------------------------------------


def _wire_parts(img, memo):
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

    cache = getattr(img, "_fdata_cache", None)
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
    extensions = [(ext.get_code(), _ext_bytes(ext)) for ext in getattr(hdr, "extensions", ())]
    return hdr.binaryblock, affine, extensions, data, retype


def _ext_bytes(ext):
    content = getattr(ext, "content", None)  # nibabel >= 5.2: the raw bytes
    if isinstance(content, bytes):
        return content
    return ext._mangle(ext.get_content())
