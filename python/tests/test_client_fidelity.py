"""What the mount serves for an image handed over from Python is what nibabel's `to_filename`
of that image stores: datatype, scaling, values, and the header field by field."""

import os
import subprocess

import nibabel as nib
import numpy as np
import pytest

from imgfs_testlib import data_file, imgfs, mount  # noqa: F401  (fixture)


def raw_header(path):
    with open(path, "rb") as f:
        blob = f.read(4)
    klass = nib.Nifti2Header if blob in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
    with open(path, "rb") as f:
        return klass.from_fileobj(f, check=False)


def differences(got, want):
    out = []
    for field in want.keys():
        if field == "vox_offset":  # any offset past the extensions is the same file to readers
            continue
        a, b = np.asarray(got[field]), np.asarray(want[field])
        # NaN equals NaN only where nibabel itself writes NaN
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            out.append(f"{field}: imgfs {a.tolist()} nibabel {b.tolist()}")
    return out


def assert_stored_as_nibabel_stores(served, img, tmp_path):
    ref = str(tmp_path / "nibabel.nii")
    img.to_filename(ref)
    got, want = raw_header(served), raw_header(ref)
    differ = differences(got, want)
    assert not differ, "\n".join(differ)
    a, b = nib.load(served), nib.load(ref)
    assert a.get_data_dtype() == b.get_data_dtype()
    assert (a.dataobj.slope, a.dataobj.inter) == (b.dataobj.slope, b.dataobj.inter)
    assert np.array_equal(a.dataobj.get_unscaled(), b.dataobj.get_unscaled())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int32])
def test_a_datatype_change_of_a_loaded_image_reaches_the_served_file(mount, tmp_path, dtype):
    img = imgfs.load(data_file("example4d.nii.gz"))
    assert img.get_data_dtype() == np.int16
    img.set_data_dtype(dtype)
    served = imgfs.as_filename(img, mount)
    assert served.startswith(str(mount.dir))
    assert_stored_as_nibabel_stores(served, img, tmp_path)


@pytest.mark.parametrize("dtype", [None, np.int16])
def test_a_new_in_memory_image_is_stored_as_nibabel_stores_it(mount, tmp_path, dtype):
    rng = np.random.default_rng(17)
    data = rng.normal(50, 10, size=(9, 8, 7, 3)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header["pixdim"][4:] = [2.5, 0.5, 0.25, 0.125]
    if dtype is not None:
        img.set_data_dtype(dtype)
    served = imgfs.as_filename(img, mount)
    assert served.startswith(str(mount.dir))
    got = raw_header(served)
    for field in ("scl_slope", "scl_inter"):
        assert np.isfinite(got[field]), f"{field} served as {got[field]}"
    assert_stored_as_nibabel_stores(served, img, tmp_path)


def daemon_rss_anon_kib(mount):
    """Private memory of the daemon serving `mount` (the shared data it maps are not counted:
    they are the sender's array, not a copy)."""
    out = subprocess.run(["pgrep", "-f", f"imgfs mount {mount.dir}"], capture_output=True, text=True)
    pid = int(out.stdout.split()[0])
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_datatype_changes_of_a_large_in_memory_image_hold_no_copy(mount):
    size = 128 << 20
    data = imgfs.empty((128, 128, 64, 32), np.float32)
    data[...] = np.linspace(-1000, 1000, 128, dtype=np.float32)[:, None, None, None]
    img = nib.Nifti1Image(data, np.eye(4))
    path = imgfs.as_filename(img, mount)
    name = os.path.basename(path)[: -len(".nii")]
    before = daemon_rss_anon_kib(mount)
    for dtype in ("int16", "uint8", "float32", "int16"):
        mount.set(name, datatype=dtype)
    grew = daemon_rss_anon_kib(mount) - before
    assert grew < size // 4 // 1024, f"daemon private memory grew by {grew} KiB for 128 MiB"
    back = nib.load(path).dataobj
    assert back.dtype == np.int16
    assert np.allclose(back[:3, 0, 0, 0], data[:3, 0, 0, 0], atol=0.05)


def served_pieces(path):
    """(header without vox_offset, the bytes between header and data, vox_offset, data)."""
    with open(path, "rb") as f:
        raw = f.read()
    offset = int(raw_header(path)["vox_offset"])
    return raw[:108] + raw[112:348], raw[348:offset], offset, raw[offset:]


@pytest.mark.parametrize("route", ["copy", "zero-copy"])
def test_a_handed_over_image_is_served_by_passthrough_as_nibabel_stores_it(mount, tmp_path, route):
    rng = np.random.default_rng(23)
    data = rng.normal(0, 100, size=(10, 9, 8, 3)).astype(np.float32)
    if route == "zero-copy":
        data = imgfs.asarray(data)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.5, 3.0, 1.0]))
    before = mount.stats()
    served = imgfs.as_filename(img, mount)
    name = os.path.basename(served)[: -len(".nii")]
    assert mount.show(name)["served_as"] == "passthrough"
    got_header, got_between, got_offset, got_data = served_pieces(served)
    after = mount.stats()
    if os.geteuid() == 0:  # kernel passthrough needs CAP_SYS_ADMIN
        assert after["passthrough_opens"] > before["passthrough_opens"]
        assert after["rendered_opens"] == before["rendered_opens"]
    else:  # an ordinary user's mount forwards reads to the same memfd instead
        assert after["forwarded_reads"] > before["forwarded_reads"]

    ref = str(tmp_path / "nibabel.nii")
    img.to_filename(ref)
    want_header, want_between, want_offset, want_data = served_pieces(ref)
    assert got_offset % 4096 == 0 and got_offset >= want_offset
    assert got_header == want_header
    # no extensions, then zeros up to the page-aligned data
    assert got_between == want_between + bytes(got_offset - want_offset)
    assert got_data == want_data
    back = nib.load(served)
    assert np.array_equal(back.get_fdata(), data)
