"""Shared-memory arrays: recognized by the registry, sent without a copy (the put carries the
array's own memfd, which the daemon maps), and snapshotted: writes after the handoff never reach
what the mount serves."""

import gc
import itertools
import os

import nibabel as nib
import numpy as np
import pytest
from imgfs_testlib import in_mount, mount, needs_error_kinds  # noqa: F401 (mount: a fixture)

import imgfs
from imgfs import _control, handoff, shm


def _ino(fd):
    return os.fstat(fd).st_ino


@pytest.fixture
def sent(monkeypatch):
    """The inodes of the descriptors attached to each request, in order."""
    log = []
    real = _control.Connection.request

    def spy(self, op, fds=(), **fields):
        log.append((op, [_ino(fd) for fd in fds], fields.get("data_offset", 0)))
        return real(self, op, fds=fds, **fields)

    monkeypatch.setattr(_control.Connection, "request", spy)
    return lambda: [(ino, off) for op, inos, off in log if op == "put" for ino in inos]


def _maps(ino, pid="self"):
    """The permissions of each mapping of inode `ino` in process `pid`."""
    perms = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[4] == str(ino) and "memfd:" in parts[5]:
                perms.append(parts[1])
    return perms


def _values(shape, dtype=np.float32, start=0):
    n = int(np.prod(shape))
    return (np.arange(start, start + n) % 251).astype(dtype).reshape(shape, order="F")


def _served_bytes(path, nbytes):
    """The data bytes of a served .nii file, read through the mount."""
    offset = nib.load(path).dataobj.offset
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(nbytes)


# -- the registry ---------------------------------------------------------------------------


def test_shared_arrays_and_views_are_recognized():
    a = imgfs.empty((4, 5, 6, 3), np.float32)
    assert a.flags.f_contiguous and not a.flags.c_contiguous and a.dtype == np.float32
    assert imgfs.is_shared(a)
    assert imgfs.is_shared(a[...])
    assert imgfs.is_shared(a.reshape(-1, order="F"))
    assert imgfs.is_shared(a[..., :2])  # F-contiguous, at offset 0
    assert imgfs.is_shared(a[..., 1])  # F-contiguous, at 480 bytes: sent with data_offset
    assert shm.lookup(a[..., 1])[1] == 4 * 5 * 6 * 4
    assert not imgfs.is_shared(a[::2])  # not contiguous
    assert not imgfs.is_shared(a.T)  # C-contiguous only
    assert not imgfs.is_shared(a.view(a.dtype.newbyteorder()))  # not native byte order
    assert not imgfs.is_shared(a.copy(order="F"))
    assert not imgfs.is_shared(np.zeros((4, 5, 6, 3), np.float32, order="F"))
    b = imgfs.empty(16, np.int8)
    assert imgfs.is_shared(b[8:]) and not imgfs.is_shared(b[1:])  # data_offset must be 8k
    assert not imgfs.is_shared(imgfs.empty((3, 4), order="C"))


def test_zeros_and_asarray():
    z = imgfs.zeros((3, 4, 5), np.int16)
    assert imgfs.is_shared(z) and not z.any() and z.dtype == np.int16
    src = np.arange(60, dtype=">f8").reshape(3, 4, 5)  # C order, big-endian
    a = imgfs.asarray(src)
    assert imgfs.is_shared(a) and a.dtype == np.float64 and a.dtype.isnative
    assert a.flags.f_contiguous and np.array_equal(a, src)
    assert imgfs.asarray(a) is a  # already shared: no second copy
    c = imgfs.asarray(src, dtype=np.float32)
    assert imgfs.is_shared(c) and c.dtype == np.float32 and np.array_equal(c, src)


def test_the_mapping_goes_with_the_last_array():
    a = imgfs.empty((8, 8), np.float32)
    ino = _ino(shm.memfd_of(a))
    view = a[:, 2:]
    del a
    gc.collect()
    assert _maps(ino) == ["rw-s"]  # the view keeps it
    view[...] = 1
    del view
    gc.collect()
    assert _maps(ino) == []


# -- zero copy ------------------------------------------------------------------------------


def test_handoff_sends_the_arrays_own_memfd(mount, sent):
    a = imgfs.empty((6, 7, 8, 2), np.float32)
    a[...] = _values(a.shape)
    ino = _ino(shm.memfd_of(a))
    assert _maps(ino) == ["rw-s"]
    img = nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0]))
    path = imgfs.as_filename(img, mount)
    assert in_mount(mount, path)
    # the memfd is the served file: the daemon wrote the header in front of the data
    assert mount.show(os.path.basename(path)[: -len(".nii")])["served_as"] == "passthrough"
    assert sent() == [(ino, shm.HEADER_ROOM)]  # the very memfd, not a copy, data after the header
    assert _maps(ino) == ["rw-p"]  # our view: same memfd, now copy-on-write
    assert _maps(ino, mount.ping()["pid"]) == ["r--s"]  # the daemon maps those pages itself
    assert not imgfs.is_shared(a)  # handed over once; the next handoff copies
    assert _served_bytes(path, a.nbytes) == a.tobytes(order="F")
    back = nib.load(path)
    assert back.get_data_dtype() == np.float32
    assert np.array_equal(back.get_fdata(), a)


def test_shared_arrays_and_copies_cannot_shrink_under_the_mount(mount, sent):
    a = imgfs.zeros((4, 5, 6), np.float32)
    a[...] = _values(a.shape)
    fd = shm.memfd_of(a)
    ino = _ino(fd)
    for size in (0, a.nbytes // 2):
        with pytest.raises(PermissionError):
            os.ftruncate(fd, size)
    path = imgfs.as_filename(nib.Nifti1Image(a, np.eye(4)), mount)
    assert sent() == [(ino, shm.HEADER_ROOM)]  # still the zero-copy route
    assert np.array_equal(nib.load(path).get_fdata(), a)
    b = _values((3, 4, 5))  # an ordinary array: copied into a fresh, sealed memfd
    wire = imgfs.mount.wire_data(b)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(wire.fd, 0)
    finally:
        os.close(wire.fd)


def test_view_into_a_shared_array_goes_with_an_offset(mount, sent):
    a = imgfs.empty((5, 6, 7, 3), np.int16)
    a[...] = _values(a.shape, np.int16)
    ino = _ino(shm.memfd_of(a))
    vol = a[..., 2]
    path = imgfs.as_filename(nib.Nifti1Image(vol, np.eye(4)), mount)
    assert sent() == [(ino, shm.HEADER_ROOM + 2 * vol.nbytes)]
    # a part of the memfd cannot be the served file: rendered from it
    assert mount.show(os.path.basename(path)[: -len(".nii")])["served_as"] == "rendered"
    assert np.array_equal(nib.load(path).get_fdata(), vol)
    assert _served_bytes(path, vol.nbytes) == vol.tobytes(order="F")


def test_mount_put_takes_shared_arrays_too(mount, sent):
    a = imgfs.asarray(_values((3, 4, 5)))
    ino = _ino(shm.memfd_of(a))
    hdr = nib.Nifti1Header()
    summary = mount.put("shm-direct", hdr.binaryblock, np.eye(4), a)
    assert sent() == [(ino, shm.HEADER_ROOM)]
    assert np.array_equal(nib.load(summary["path"]).get_fdata(), a)


def test_ordinary_arrays_are_copied(mount, sent):
    a = _values((3, 4, 5))
    path = imgfs.as_filename(nib.Nifti1Image(a, np.eye(4)), mount)
    (ino, off), = sent()
    assert off == shm.HEADER_ROOM and _maps(ino) == []  # a memfd of its own, not mapped by us
    assert np.array_equal(nib.load(path).get_fdata(), a)


def test_name_clash_retry_resends_the_same_memfd(mount, sent, monkeypatch):
    needs_error_kinds(mount)  # a clash is known by its kind, never by the message's words
    taken = imgfs.asarray(np.zeros((2, 2, 2), np.float32))
    monkeypatch.setattr(handoff, "_counter", itertools.count(1))
    monkeypatch.setattr(handoff, "_stem", lambda img: "clash")
    mount.put("clash-1", nib.Nifti1Header().binaryblock, np.eye(4), taken)
    img = nib.Nifti1Image(imgfs.asarray(_values((2, 2, 2))), np.eye(4))
    ino = _ino(shm.memfd_of(img.dataobj))
    path = imgfs.as_filename(img, mount)
    assert os.path.basename(path) == "clash-2.nii"
    assert [i for i, _ in sent()[1:]] == [ino, ino]  # refused, then accepted: one memfd
    assert np.array_equal(nib.load(path).get_fdata(), _values((2, 2, 2)))


def test_retyped_image_keeps_its_dtype(mount):
    a = imgfs.asarray(np.linspace(0, 100, 60).reshape(3, 4, 5))
    img = nib.Nifti1Image(a, np.eye(4), dtype=np.int16)
    back = nib.load(imgfs.as_filename(img, mount))
    assert back.get_data_dtype() == np.int16
    assert np.allclose(back.get_fdata(), a, atol=0.01)


# -- snapshot: what was handed over stays what is served ------------------------------------


def test_writes_after_the_handoff_do_not_reach_the_mount(mount, sent):
    a = imgfs.empty((16, 16, 16, 4), np.float32)  # 256 KiB: many pages
    a[...] = _values(a.shape)
    want = a.copy(order="F")
    ino = _ino(shm.memfd_of(a))
    img = nib.Nifti1Image(a, np.eye(4))
    path = imgfs.as_filename(img, mount)

    a[..., 1] = -1  # some pages
    a[0, 0, 0, 0] = 42
    assert np.array_equal(nib.load(path).get_fdata(), want)
    a[...] = 7  # every page
    assert (a == 7).all()
    assert np.array_equal(nib.load(path).get_fdata(), want)
    assert _served_bytes(path, a.nbytes) == want.tobytes(order="F")

    # handing the changed image over again sends the new values, as a copy, under the same name
    assert imgfs.as_filename(img, mount) == path
    assert [i for i, _ in sent()] != [ino, ino] and sent()[0][0] == ino
    assert (nib.load(path).get_fdata() == 7).all()
    a[...] = 8  # and that version is a snapshot too
    assert (nib.load(path).get_fdata() == 7).all()
    assert imgfs.as_filename(img, mount) == path
    assert (nib.load(path).get_fdata() == 8).all()


def test_a_refused_put_leaves_the_array_intact(mount, sent):
    a = imgfs.asarray(_values((3, 4, 5)))
    want = a.copy()
    with pytest.raises(imgfs.ImgfsError):
        mount.put("bad header", b"not a header", np.eye(4), a)
    assert np.array_equal(a, want)
    a[0, 0, 0] = -5  # still writable
    assert a[0, 0, 0] == -5
    path = imgfs.as_filename(nib.Nifti1Image(a, np.eye(4)), mount)
    assert np.array_equal(nib.load(path).get_fdata(), a)
