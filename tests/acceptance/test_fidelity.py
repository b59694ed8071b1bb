"""Datatype changes as nibabel makes them, through a real mount: each change starts from the
data as they are (never from an earlier change's rounded numbers), holds no copy of the data in
the daemon, and the served header equals, field by field, the one nibabel writes for the same
change."""
import os

import nibabel as nib
import numpy as np
import pytest

import helpers
from helpers import describe
from test_mount import MountedDir, start_mount

# The datatypes each corpus image is changed to: its own, and one of each kind of change
# (int -> float, float -> int, int -> int, float -> float, whichever apply to its type).
TARGETS = ["same", "float32", "float64", "int16", "uint8", "int32"]
CORPUS_IDS = [f"corpus/{n}" for n in helpers.CORPUS if n not in helpers.CORPUS_NO_DATA]
WITHIMG_IDS = [f"withimg/{n}" for n in sorted(helpers.CORPUS_NO_DATA) if n != "analyze.hdr"]


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mnt") / "m"
    m = start_mount(path)
    yield m
    helpers.imgfs("unmount", path)


def served_header(path):
    with open(path, "rb") as f:
        blob = f.read(540)
    klass = nib.Nifti2Header if blob[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
    with open(path, "rb") as f:
        return klass.from_fileobj(f, check=False)


def nibabel_reference(src, dtype, out):
    """What nibabel writes for set_data_dtype(dtype) + to_filename, as a single .nii."""
    img = helpers.load(src)
    if src.endswith((".hdr", ".hdr.gz")):
        # served as one .nii: the same image as nibabel's single-file class
        klass = nib.Nifti2Image if isinstance(img, nib.Nifti2Pair) else nib.Nifti1Image
        img = klass(img.dataobj, img.affine, img.header, extra=img.extra)
    img.set_data_dtype(dtype)
    img.to_filename(out)
    return served_header(out)


def header_differences(got, want):
    differ = []
    for field in want.keys():
        a, b = np.asarray(got[field]), np.asarray(want[field])
        if field == "pixdim" and a[0] == 0 and b[0] == 1:
            # The one legitimate difference: nibabel's check at load rewrites a qfac of 0
            # (row_major.dconn.nii) to 1; imgfs keeps the header's bytes as the file has them
            # (test_convert_to_own_format_keeps_header_bytes). Both read qfac 0 as 1.
            a = a.copy()
            a[0] = 1
        # NaN equals NaN only where nibabel itself writes NaN
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            differ.append(f"{field}: imgfs {a.tolist()} nibabel {b.tolist()}")
    return differ


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("ident", CORPUS_IDS + WITHIMG_IDS)
def test_served_header_equals_nibabels_for_a_datatype_change(mnt, resolve, ident, target, tmp_path):
    src = resolve(ident)
    own = helpers.load(src).get_data_dtype()
    dtype = own.newbyteorder("=") if target == "same" else np.dtype(target)
    if own.kind not in "iuf" and target != "same":
        pytest.skip(f"{ident} holds {own}: not convertible to {target}")
    name = f"h{abs(hash((ident, target))) % 10**8}"
    ok(mnt("add", f"{name}={src}"))
    try:
        ok(mnt("set", name, f"datatype={dtype.name}"))
        ok(mnt("mark", name, "dirty"))  # served rendered, as any changed image is
        got = served_header(mnt.file(name))
        want = nibabel_reference(src, dtype, str(tmp_path / "nibabel.nii"))
        differ = header_differences(got, want)
        assert not differ, f"{ident} -> {target}:\n" + "\n".join(differ)
        for field in ("scl_slope", "scl_inter"):
            assert np.isfinite(got[field]), f"{field} is {got[field]}"
    finally:
        mnt("rm", name)


def test_float32_to_int16_to_float32_gives_back_the_original_values(mnt, tmp_path):
    rng = np.random.default_rng(15)
    data = rng.normal(0, 300, size=(30, 20, 10)).astype(np.float32)
    src = str(tmp_path / "f32.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    ok(mnt("add", f"round={src}"))
    try:
        ok(mnt("set", "round", "datatype=int16"))
        served = nib.load(mnt.file("round"))
        assert served.get_data_dtype() == np.int16
        assert not np.array_equal(served.get_fdata(dtype=np.float32), data), "int16 rounds"
        ok(mnt("set", "round", "datatype=float32"))
        back = nib.load(mnt.file("round"))
        assert back.get_data_dtype() == np.float32
        got = np.asanyarray(back.dataobj)
        differ = np.flatnonzero(got != data)
        assert differ.size == 0, (
            f"{differ.size} values differ from the original, e.g. {got.flat[differ[:3]]} vs "
            f"{data.flat[differ[:3]]}"
        )
    finally:
        mnt("rm", "round")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_datatype_changes_of_a_large_original_hold_no_copy_of_its_data(mnt, tmp_path):
    size = 256 << 20
    shape = (128, 128, 64, 64)  # float32: 256 MiB
    src = str(tmp_path / "large.nii")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.eye(4), 1)
    with open(src, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * (352 - f.tell()))
        # a value range to scale, without writing 256 MiB of random numbers
        block = np.linspace(-1000, 1000, 1 << 20, dtype=np.float32).tobytes()
        for _ in range(size // len(block)):
            f.write(block)
    ok(mnt("add", f"large={src}"))
    try:
        pid = mnt.daemon_pid()
        before = rss_kib(pid)
        ok(mnt("set", "large", "datatype=int16"))
        ok(mnt("set", "large", "datatype=uint8"))
        ok(mnt("set", "large", "datatype=float32"))
        ok(mnt("set", "large", "datatype=int16"))
        grew = rss_kib(pid) - before
        assert grew < size // 4 // 1024, f"daemon RSS grew by {grew} KiB for a {size >> 20} MiB image"
        got = nib.load(mnt.file("large")).dataobj[:4, 0, 0, 0]
        assert np.allclose(got, np.linspace(-1000, 1000, 1 << 20)[:4], atol=0.05)
    finally:
        mnt("rm", "large")


@pytest.mark.parametrize("inter", [float("nan"), float("inf"), float("-inf")])
def test_a_valid_slope_with_a_non_finite_intercept_is_served_as_it_reads(mnt, tmp_path, inter):
    """imgfs (as the NIfTI C library) reads a non-finite intercept beside a valid slope as 0;
    nibabel refuses such a file, so a rendered file carries the intercept as it is read."""
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, 0.0)
    src = str(tmp_path / "src.nii")
    img.to_filename(src)
    with open(src, "r+b") as f:  # scl_inter is the float32 at byte 116
        f.seek(116)
        f.write(np.float32(inter).tobytes())
    name = f"inter{abs(hash(str(inter))) % 1000}"
    ok(mnt("add", f"{name}={src}"))
    ok(mnt("set", name, "descrip=edited"))
    served = nib.load(mnt.file(name))
    assert served.dataobj.slope == 2.0 and served.dataobj.inter == 0.0
    np.testing.assert_array_equal(served.get_fdata(), data * 2.0)
    ok(mnt("rm", name))
