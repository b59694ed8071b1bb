"""Images that travel as recipes: on a cluster, a task may run on any node, and shipping the voxels
of an image whose data are still its original file's is waste when every node sees that file.

An image this client knows (from `imgfs.load`, or handed to `as_filename` once) pickles, while
its data are its original's, as a recipe: the original's path and identity, the header edits,
the data type change. The pickle's size does not depend on the data's. Unpickled, it is an
ordinary nibabel image reading the original lazily; `as_filename` on it first checks that the
original still has the recorded identity, then has the local mount `add` the original and `set`
the edits, so the file is rendered from the shared original. An image whose data changed (or
whose original changed since it was loaded) pickles as its array. Images this client does not
know pickle as nibabel pickles them.

Identity across nodes: device and inode numbers are per client on NFS and other network file
systems (and the change time moves on a chmod or a new hard link), so a recipe records what a
shared file system keeps for everyone: the size, the modification time in nanoseconds, and a
SHA-256 of the first 64 KiB (the header and extensions) plus 17 blocks of 4 KiB spread evenly
over the rest. A rewrite that keeps the size, sets the mtime back and changes only unsampled
bytes is not noticed; any other change refuses the recipe, naming the file and what differs.
"""

from __future__ import annotations

import copyreg
import hashlib
import os
import weakref
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.analyze import AnalyzeImage
from nibabel.arrayproxy import ArrayProxy
from nibabel.spm2analyze import Spm2AnalyzeImage
from nibabel.spm99analyze import Spm99AnalyzeImage

from .errors import ImgfsError, Unavailable

# NIfTI images travel as recipes: the daemon's `set` takes their header fields by name
_RECIPE_CLASSES = (nib.Nifti1Image, nib.Nifti1Pair, nib.Nifti2Image, nib.Nifti2Pair)
# every class whose pickling this module decides (copyreg looks up the exact class)
_CLASSES = _RECIPE_CLASSES + (AnalyzeImage, Spm99AnalyzeImage, Spm2AnalyzeImage)

_HEAD = 64 * 1024
_BLOCK = 4096
_BLOCKS = 17
# fields the daemon lays out itself, or that follow the data type
_LAID_OUT = {"sizeof_hdr", "vox_offset", "magic", "bitpix", "datatype"}
# fields whose change needs the data: such an image travels as its array
_NEEDS_DATA = {"dim", "scl_slope", "scl_inter"}


class OriginalChanged(Unavailable):
    """A recipe's original no longer has the identity recorded when the image was pickled."""


@dataclass(frozen=True)
class FileIdentity:
    """What every node sharing the file system sees of one file: see the module's doc."""

    kind: str
    path: str
    size: int
    mtime_ns: int
    digest: str


def fingerprint(kind: str, path: str) -> FileIdentity:
    """The identity of the file at `path` now; raises OSError if it cannot be read, and
    ImgfsError if it changed while being read."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        size = before.st_size
        h = hashlib.sha256()
        h.update(os.pread(f.fileno(), min(size, _HEAD), 0))
        if size > _HEAD:
            span = size - _HEAD - _BLOCK
            for k in range(_BLOCKS):
                off = _HEAD + max(span, 0) * k // (_BLOCKS - 1)
                h.update(os.pread(f.fileno(), _BLOCK, off))
        after = os.fstat(f.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise ImgfsError(f"{path} changed while its identity was taken")
    return FileIdentity(kind, path, size, before.st_mtime_ns, h.hexdigest())


def differences(recorded: FileIdentity) -> list[str]:
    """How the file differs now from `recorded`: empty when it matches."""
    try:
        now = fingerprint(recorded.kind, recorded.path)
    except FileNotFoundError:
        return ["it no longer exists"]
    except (OSError, ImgfsError) as e:
        return [f"it cannot be read ({e})"]
    diffs = []
    if now.size != recorded.size:
        diffs.append(f"size was {recorded.size} bytes, is {now.size}")
    if now.mtime_ns != recorded.mtime_ns:
        diffs.append(f"modification time was {recorded.mtime_ns} ns, is {now.mtime_ns} ns")
    if now.digest != recorded.digest:
        diffs.append("its sampled content differs")
    return diffs


@dataclass
class Recipe:
    """How to make an image on any node that sees its original: the class, the original's
    files (`file_map`) and their identities, the data's layout in it (`proxy`), the original's
    header as on disk, and the image's own header and affine."""

    klass: type
    file_map: dict[str, Any]
    files: tuple[FileIdentity, ...]
    proxy: ArrayProxy
    disk_header: Any
    header: Any
    affine: np.ndarray[Any, Any]
    extra: dict[str, Any]

    def check(self) -> None:
        """Raise OriginalChanged unless every file of the original still matches."""
        for f in self.files:
            diffs = differences(f)
            if diffs:
                raise OriginalChanged(
                    f"refusing the recipe of image {os.path.basename(self.files[0].path)!r}: "
                    f"its original {f.path} changed since the image was pickled: "
                    + "; ".join(diffs)
                    + ". Load the image again, or send its data"
                )


# images unpickled here from a recipe (by the image itself, so the record dies with it)
_received: weakref.WeakKeyDictionary[Any, Recipe] = weakref.WeakKeyDictionary()


def received(img: Any) -> Recipe | None:
    """The recipe `img` was unpickled from, if it was."""
    return _received.get(img)


def forget(img: Any) -> None:
    _received.pop(img, None)


def plan(img: AnalyzeImage, disk_header: Any) -> tuple[list[list[Any]], str | None] | None:
    """The `set` fields that turn the original into `img`: header edits by nibabel's names and
    the data type to store, or None when `img` needs its data to travel (its data or shape or
    scaling or extensions changed)."""
    from .handoff import _cache_matches, _fdata_cache
    from .mount import _jsonable

    proxy = img.dataobj
    image_file = img.file_map["image"].filename
    if not isinstance(proxy, ArrayProxy) or not isinstance(proxy.file_like, str):
        return None
    if image_file is None or os.path.abspath(proxy.file_like) != os.path.abspath(image_file):
        return None
    cache = _fdata_cache(img)
    if cache is not None and not _cache_matches(img, cache, {}):
        return None
    img.update_header()  # the affine into the header's sform/qform, as to_filename does
    mine, disk = img.header, disk_header
    if type(mine) is not type(disk):
        return None
    if getattr(mine, "extensions", None) != getattr(disk, "extensions", None):
        return None
    edits: list[list[Any]] = []
    for field in mine.keys():
        if field in _LAID_OUT:
            continue
        a, b = np.asarray(mine[field]), np.asarray(disk[field])
        nan = a.dtype.kind == "f"
        if a.shape == b.shape and np.array_equal(a, b, equal_nan=nan):
            continue
        if field in _NEEDS_DATA:
            return None
        edits.append([field, _jsonable(np.asarray(mine[field]).tolist())])
    wanted = np.dtype(img.get_data_dtype()).newbyteorder("=")
    stored = np.dtype(disk.get_data_dtype()).newbyteorder("=")
    return edits, (wanted.name if wanted != stored else None)


def make(img: Any) -> Recipe | None:
    """The recipe of `img` if it can travel as one (see the module's doc), else None."""
    from .handoff import _identity, _seen

    if type(img) not in _RECIPE_CLASSES:
        return None
    rec = _received.get(img)
    state = _seen.get(img)
    if rec is not None:
        files, disk_header, file_map = rec.files, rec.disk_header, rec.file_map
    elif state is not None and state.identity is not None and not state.dirty_forever:
        try:
            files = tuple(
                fingerprint(kind, os.path.abspath(holder.filename))
                for kind, holder in sorted(img.file_map.items())
                if holder.filename is not None and os.path.exists(holder.filename)
            )
            # unchanged since it was first seen, also while it was being fingerprinted
            if _identity(img) != state.identity:
                state.dirty_forever = True
                return None
            disk = type(img).from_filename(img.get_filename())
        except (OSError, ImgfsError):
            return None
        disk_header, file_map = disk.header, img.file_map
        if not _same_layout(img.dataobj, disk.dataobj):
            return None
    else:
        return None
    if plan(img, disk_header) is None:
        return None
    return Recipe(
        type(img), file_map, files, img.dataobj, disk_header, img.header.copy(),
        np.array(img.affine), dict(img.extra),
    )


def filename(img: Any, rec: Recipe, mount: Any, keep: bool) -> str | None:
    """`as_filename` of an image unpickled from `rec`: the original itself if nothing was
    edited, else the mount's file made by `add` + `set`; None if `img` was since changed here
    so that its data must be sent (the caller hands it over as any image)."""
    from .handoff import _clash, _mount, _remove_at_exit, _stem

    rec.check()
    steps = plan(img, rec.disk_header)
    if steps is None:
        return None
    edits, datatype = steps
    fields = ([["datatype", datatype]] if datatype else []) + edits
    if not fields:
        return str(img.get_filename())
    m = _mount(mount)
    made = _made.setdefault(img, {})
    prev = made.get(m.dir)
    if prev is not None:
        if prev[0] == fields:
            try:
                return str(m.request("path", name=prev[1])["path"])
            except ImgfsError:
                pass  # removed meanwhile: make it again
        else:
            try:
                m.rm(prev[1])
            except ImgfsError:
                pass
        del made[m.dir]
    stem = _stem(img)
    for n in range(1, 1001):
        name = f"{stem}-r{n}"
        try:
            m.add(img.get_filename(), name=name)
            break
        except ImgfsError as e:
            if not _clash(m, name, e):
                raise
    else:
        raise ImgfsError(f"no free name for {stem} in {m.dir}")
    try:
        summary = m.request("set", name=name, fields=fields)
        # the file the daemon opened at `add` is the one checked before it, unless the
        # original changed in between: then this check sees it
        rec.check()
    except BaseException:
        try:
            m.rm(name)
        except ImgfsError:
            pass
        raise
    made[m.dir] = (fields, name)
    _remove_at_exit(m, name, not keep)
    return str(summary["path"])


# recipe images made in a mount here: image -> {mount dir: (set fields, name)}
_made: weakref.WeakKeyDictionary[Any, dict[str, tuple[list[list[Any]], str]]] = (
    weakref.WeakKeyDictionary()
)


def _same_layout(a: Any, b: Any) -> bool:
    if not isinstance(a, ArrayProxy) or not isinstance(b, ArrayProxy):
        return False
    return (a.shape, a.dtype, a.offset, a.slope, a.inter) == (
        b.shape, b.dtype, b.offset, b.slope, b.inter
    ) and a.order == b.order


def _rebuild(recipe: Recipe) -> Any:
    """Unpickling: the image as the sender saw it, reading the original lazily. Nothing is
    checked or read here; `as_filename` checks the original before anything is served."""
    img = recipe.klass(
        recipe.proxy, recipe.affine, recipe.header, extra=recipe.extra, file_map=recipe.file_map
    )
    _received[img] = recipe
    return img


def _in_memory(klass: type, data: Any, affine: Any, header: Any, extra: Any) -> Any:
    return klass(data, affine, header, extra=extra)


def _reduce(img: Any) -> Any:
    """copyreg's reducer for nibabel's image classes: a recipe, the array, or nibabel's own."""
    from .handoff import _cache_matches, _fdata_cache, _seen

    recipe = make(img)
    if recipe is not None:
        return _rebuild, (recipe,)
    if img in _seen or img in _received:
        # known here but its data are not the original's (or it changed): send the array
        cache = _fdata_cache(img)
        if cache is not None and not _cache_matches(img, cache, {}):
            data = cache
        else:
            data = np.asanyarray(img.dataobj)
        return _in_memory, (type(img), data, img.affine, img.header, img.extra)
    return img.__reduce_ex__(4)


def register() -> None:
    """Make this client decide how nibabel images pickle (done on `import imgfs`)."""
    for klass in _CLASSES:
        copyreg.pickle(klass, _reduce)
