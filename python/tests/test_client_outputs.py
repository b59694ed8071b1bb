"""imgfs.output: a tool writes its output into the mount, Python gets it back as a nibabel
image mapping the daemon's memory (no copy), or an error naming the file and why."""

import os

import nibabel as nib
import numpy as np
import pytest
from imgfs_testlib import mount, run, write_image  # noqa: F401 (mount: a fixture)

import imgfs


def rss_anon_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_a_tools_output_comes_back_as_a_mapped_image(mount, tmp_path):
    data = np.arange(64 * 64 * 32 * 8, dtype=np.float32).reshape(64, 64, 32, 8)  # 4 MiB
    src = write_image(tmp_path / "in.nii", data)
    out = imgfs.output("copy.nii", mount=mount)
    assert os.path.dirname(out.path) == mount.dir and out.path.endswith(".nii")
    code, text = run("nifti_tool", "-copy_im", "-prefix", os.fspath(out), "-infiles", src)
    assert code == 0, text
    img = out.load()
    arr = np.asarray(img.dataobj)
    assert isinstance(arr, np.memmap) or isinstance(arr.base, np.memmap), type(arr.base)
    before = rss_anon_kib()
    assert np.array_equal(arr, data)
    # Reading the values maps the mount's pages: no anonymous copy of the 4 MiB.
    assert rss_anon_kib() - before < 1024
    assert {i["name"]: i for i in mount.ls()}[out.name]["state"] == "written in the mount"
    del arr, img
    out.remove()
    assert not os.path.exists(out.path)
    assert out.name not in {i["name"] for i in mount.ls()}


def test_an_output_that_is_not_an_image_raises_naming_the_file_and_why(mount):
    out = imgfs.output("bad.nii", mount=mount)
    with open(out, "wb") as f:
        f.write(b"not a NIfTI header")
    with pytest.raises(imgfs.ImgfsError) as e:
        out.load()
    assert out.path in str(e.value) and "no image was written" in str(e.value)
    missing = imgfs.output("never.nii", mount=mount)
    with pytest.raises(imgfs.ImgfsError, match="wrote nothing"):
        missing.load()
    out.remove()


def test_output_names_are_unique_unless_asked(mount):
    a, b = imgfs.output("x.nii.gz", mount=mount), imgfs.output("x.nii.gz", mount=mount)
    assert a.path != b.path and a.path.endswith(".nii.gz")
    assert imgfs.output("y.nii", mount=mount, unique=False).path == os.path.join(mount.dir, "y.nii")
    with pytest.raises(ValueError):
        imgfs.output("../escape.nii", mount=mount, unique=False)
