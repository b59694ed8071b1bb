"""Compressed originals (issue 9): a header-edited or datatype-changed `.nii.gz` is served by
range through a gzip index, so the daemon never holds the decompressed image, and what it
serves is what nibabel reads from the original."""

import gzip
import hashlib
import os

import nibabel as nib
import numpy as np
import pytest

import helpers
from helpers import describe
from test_mount import start_mount

SHAPE = (128, 128, 48, 64)  # float32: 192 MiB decompressed
SIZE = int(np.prod(SHAPE)) * 4


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mnt") / "m"
    m = start_mount(path)
    yield m
    helpers.imgfs("unmount", path)


@pytest.fixture(scope="module")
def large_gz(tmp_path_factory):
    """A 192 MiB float32 image written by nibabel as .nii.gz, with a value range to scale."""
    path = str(tmp_path_factory.mktemp("gz") / "large.nii.gz")
    block = np.linspace(-1000, 1000, 128 * 128 * 48, dtype=np.float32).reshape(SHAPE[:3])
    data = np.empty(SHAPE, dtype=np.float32, order="F")
    for t in range(SHAPE[3]):
        data[..., t] = block + t
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_whole(path):
    """The file's bytes through read() (no mapping), hashed as they come."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def test_a_header_edited_nii_gz_is_served_whole_without_holding_its_data(mnt, large_gz):
    ok(mnt("add", f"big={large_gz}"))
    try:
        pid = mnt.daemon_pid()
        before = rss_mib(pid)
        ok(mnt("set", "big", "descrip=edited"))
        # The header comes without inflating the data.
        with open(mnt.file("big"), "rb") as f:
            head = f.read(352)
        assert head[148:154] == b"edited"
        served, n = read_whole(mnt.file("big"))
        grew = rss_mib(pid) - before
        with gzip.open(large_gz, "rb") as f:
            original = f.read()
        want = hashlib.sha256(head + original[352:]).hexdigest()
        assert n == len(original) and served == want, "served bytes differ from the original's"
        assert grew < 96, f"daemon RSS grew by {grew:.0f} MiB reading a {SIZE >> 20} MiB image"
        # The index outlives the edit: a new version's last MiB reads back right.
        ok(mnt("set", "big", "descrip=again"))
        with open(mnt.file("big"), "rb") as f:
            f.seek(n - (1 << 20))
            assert f.read() == original[-(1 << 20):]
    finally:
        mnt("rm", "big")


def test_a_datatype_change_of_a_nii_gz_converts_by_range_as_nibabel_does(mnt, large_gz, tmp_path):
    ok(mnt("add", f"conv={large_gz}"))
    try:
        pid = mnt.daemon_pid()
        before = rss_mib(pid)
        ok(mnt("set", "conv", "datatype=int16"))
        digest, _ = read_whole(mnt.file("conv"))
        grew = rss_mib(pid) - before
        assert grew < 96, f"daemon RSS grew by {grew:.0f} MiB converting a {SIZE >> 20} MiB image"
        ref = str(tmp_path / "ref.nii")
        img = nib.load(large_gz)
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        out.set_data_dtype(np.int16)
        nib.save(out, ref)
        served = nib.load(mnt.file("conv"))
        want = nib.load(ref)
        assert served.header.get_slope_inter() == pytest.approx(want.header.get_slope_inter())
        got = np.asanyarray(served.dataobj.get_unscaled())
        assert np.array_equal(got, np.asanyarray(want.dataobj.get_unscaled())), \
            "stored numbers differ from nibabel's"
    finally:
        mnt("rm", "conv")
