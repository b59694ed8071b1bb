"""as_filename against a real mount: the own file while unchanged, the mount otherwise, and every
reader (nibabel, nifti_tool, MRtrix3) sees the change through the mount path."""

import os

import nibabel as nib
import numpy as np
import pytest
from imgfs_testlib import (  # noqa: F401 (mount, images: fixtures)
    assert_nifti_tool_good,
    data_file,
    images,
    in_mount,
    mount,
    mrinfo,
    nifti_tool_field,
    run,
    write_image,
)

import imgfs


@pytest.fixture
def small(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    return write_image(tmp_path / "small.nii", data)


# -- unchanged: the image's own file, and nothing sent ------------------------------------


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "functional.nii"])
def test_unchanged_image_gives_its_own_file(mount, images, name):
    before = images()
    img = nib.load(data_file(name))
    assert imgfs.as_filename(img, mount) == data_file(name)
    assert imgfs.as_filename(imgfs.load(data_file(name)), mount) == data_file(name)
    assert images() == before


def test_reading_data_alone_sends_nothing(mount, images, tmp_path):
    # NaN in the file must not make the read-only cache look written to
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    data[1, 1, 1] = np.nan
    path = write_image(tmp_path / "nan.nii", data)
    before, names = images(), {s["name"] for s in mount.ls()}
    for img in (nib.load(path), nib.load(data_file("functional.nii"))):
        img.get_fdata()
        assert imgfs.as_filename(img, mount) == img.get_filename()
    assert images() == before
    assert {s["name"] for s in mount.ls()} == names


def test_unchanged_default_mount_not_needed(small):
    # the clean answer needs no daemon at all
    assert imgfs.as_filename(nib.load(small), mount="/nonexistent/imgfs-never") == small


# -- changes: served by the mount, read by every reader -----------------------------------


def test_header_edit(mount, small):
    img = nib.load(small)
    img.header["descrip"] = b"edited by test"
    path = imgfs.as_filename(img, mount)
    assert in_mount(mount, path)
    back = nib.load(path)
    assert back.header["descrip"] == b"edited by test"
    assert np.array_equal(back.get_fdata(), img.get_fdata())
    assert_nifti_tool_good(path)
    assert nifti_tool_field(path, "descrip") == "edited by test"
    assert mrinfo(path, "-property", "comments").strip() == "edited by test"


def test_data_zeroed_in_place_after_get_fdata(mount, images, small):
    img = nib.load(small)
    data = img.get_fdata()
    before = images()
    assert imgfs.as_filename(img, mount) == small  # read only: still the file
    assert images() == before
    data[...] = 0
    path = imgfs.as_filename(img, mount)
    assert in_mount(mount, path)
    back = nib.load(path)
    assert back.get_data_dtype() == np.float64
    assert not back.get_fdata().any()
    assert_nifti_tool_good(path)
    assert mrinfo(path, "-datatype").strip().startswith("Float64")
    _, out = run("mrstats", "-output", "max", path)
    assert float(out.split()[0]) == 0.0


def test_affine_changed_in_place(mount, small):
    img = nib.load(small)
    img.affine[:3, 3] += [7, 8, 9]
    want = img.affine.copy()
    path = imgfs.as_filename(img, mount)
    assert in_mount(mount, path)
    assert np.allclose(nib.load(path).affine, want)
    assert_nifti_tool_good(path)
    srow_x = [float(v) for v in nifti_tool_field(path, "srow_x").split()]
    assert srow_x == pytest.approx(want[0])
    transform = mrinfo(path, "-transform").split()
    assert [float(transform[i]) for i in (3, 7, 11)] == pytest.approx(want[:3, 3])


def test_new_in_memory_image(mount):
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    path = imgfs.as_filename(img, mount)
    assert in_mount(mount, path)
    back = nib.load(path)
    assert np.array_equal(back.get_fdata(), data)
    assert np.allclose(back.affine, affine)
    assert_nifti_tool_good(path)
    assert "3 x 4 x 5" in mrinfo(path)
    assert mrinfo(path, "-datatype").strip().startswith("Int16")


def test_c_ordered_and_big_endian_data_arrive_in_file_order(mount):
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(">f4")
    img = nib.Nifti1Image(data, np.eye(4))
    back = nib.load(imgfs.as_filename(img, mount))
    assert np.array_equal(back.get_fdata(), data)


def test_scaled_and_big_endian_files_keep_their_values(mount):
    for name in ("functional.nii", "anatomical.nii"):
        img = nib.load(data_file(name))
        img.header["descrip"] = b"x"
        path = imgfs.as_filename(img, mount)
        back = nib.load(path)
        assert back.get_data_dtype().newbyteorder("=") == img.get_data_dtype().newbyteorder("=")
        assert np.allclose(back.get_fdata(), img.get_fdata())
        assert_nifti_tool_good(path)


def test_extensions_travel(mount):
    img = nib.load(data_file("example4d.nii.gz"))
    img.header["descrip"] = b"with extensions"
    back = nib.load(imgfs.as_filename(img, mount))
    assert back.header.extensions == img.header.extensions
    assert len(back.header.extensions) == 2


def test_in_memory_array_converted_to_the_images_dtype(mount):
    data = np.linspace(0, 100, 60).reshape(3, 4, 5)
    img = nib.Nifti1Image(data, np.eye(4), dtype=np.int16)
    back = nib.load(imgfs.as_filename(img, mount))
    assert back.get_data_dtype() == np.int16
    assert np.allclose(back.get_fdata(), data, atol=0.01)


def test_resending_replaces_under_the_same_name(mount, images):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    first = imgfs.as_filename(img, mount)
    count = images()
    img.get_fdata()[...] = 5
    assert imgfs.as_filename(img, mount) == first
    assert images() == count
    assert (nib.load(first).get_fdata() == 5).all()


# -- other formats --------------------------------------------------------------------------


def test_nifti2_put(mount, tmp_path):
    img = nib.load(data_file("example_nifti2.nii.gz"))
    assert imgfs.as_filename(img, mount) == data_file("example_nifti2.nii.gz")
    img.header["descrip"] = b"nifti2 edit"
    path = imgfs.as_filename(img, mount)
    assert in_mount(mount, path)
    back = nib.load(path)
    assert isinstance(back, nib.Nifti2Image)
    assert back.header["descrip"] == b"nifti2 edit"
    assert np.array_equal(back.get_fdata(), img.get_fdata())
    # nifti_tool's -check_* know NIfTI-1 only; -disp_hdr2 reads NIfTI-2
    assert nifti_tool_field(path, "descrip", "-disp_hdr2") == "nifti2 edit"
    new = nib.Nifti2Image(np.ones((2, 3, 4), np.uint8), np.eye(4))
    assert np.array_equal(nib.load(imgfs.as_filename(new, mount)).get_fdata(), np.ones((2, 3, 4)))


@pytest.mark.parametrize(
    "klass", [nib.Spm2AnalyzeImage, nib.Spm99AnalyzeImage, nib.AnalyzeImage, nib.Nifti1Pair]
)
def test_analyze_put(mount, tmp_path, klass):
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    path = write_image(tmp_path / "ana.img", data, klass=klass)
    img = klass.load(path)  # nib.load would pick Spm2 for any .img
    assert imgfs.as_filename(img, mount) == path
    img.get_fdata()[0, 0, 0] = -1
    served = imgfs.as_filename(img, mount)
    assert in_mount(mount, served)
    back = nib.load(served)
    assert np.array_equal(back.get_fdata(), img.get_fdata())
    assert np.allclose(back.affine, img.affine)
    assert_nifti_tool_good(served)
    assert "3 x 4 x 5" in mrinfo(served)


# -- the file changed on disk ---------------------------------------------------------------


def test_file_modified_after_imgfs_load(mount, tmp_path):
    path = write_image(tmp_path / "m.nii", np.ones((2, 3, 4), np.float32))
    img = imgfs.load(path)
    write_image(path, np.full((2, 3, 4), 2, np.float32))
    assert in_mount(mount, imgfs.as_filename(img, mount))


def test_file_changed_after_first_seen_is_dirty_forever(mount, tmp_path):
    path = write_image(tmp_path / "t.nii", np.ones((2, 3, 4), np.float32))
    img = nib.load(path)
    assert imgfs.as_filename(img, mount) == path  # first seen: identity recorded
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert in_mount(mount, imgfs.as_filename(img, mount))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # back as it was: still not trusted
    assert in_mount(mount, imgfs.as_filename(img, mount))


def test_not_an_analyze_family_image():
    with pytest.raises(TypeError):
        imgfs.as_filename(nib.MGHImage(np.zeros((2, 2, 2), np.float32), np.eye(4)))


def test_default_mount_from_environment(mount, monkeypatch):
    monkeypatch.setenv("IMGFS_MOUNT", mount.dir)
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))
    assert in_mount(mount, imgfs.as_filename(img))
