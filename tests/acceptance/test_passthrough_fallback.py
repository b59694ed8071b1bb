"""B7: a file the kernel will not take as a passthrough backing file (here, an original inside
another FUSE mount) is served by forwarded reads, while the other images of the same mount keep
kernel passthrough."""
import os

import nibabel as nib
import numpy as np
import pytest

import imgfs


@pytest.fixture
def mounts(tmp_path):
    inner = imgfs.Mount(tmp_path / "inner")
    try:
        outer = imgfs.Mount(tmp_path / "outer")
    except BaseException:
        inner.close()
        raise
    yield inner, outer
    outer.close()
    inner.close()


def _stats(mount):
    s = mount.stats()
    return {k: s[k] for k in ("passthrough_opens", "rendered_opens", "forwarded_reads")}


def test_one_original_that_cannot_back_passthrough_leaves_the_others_on_it(tmp_path, mounts):
    inner, outer = mounts
    data = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    on_disk = str(tmp_path / "on_disk.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), on_disk)
    inner.request("add", path=on_disk, name="deep")
    in_fuse = os.path.join(inner.dir, "deep.nii")
    outer.request("add", path=in_fuse, name="nested")
    outer.request("add", path=on_disk, name="plain")
    with open(on_disk, "rb") as f:
        expected = f.read()

    def cat(name):
        with open(os.path.join(outer.dir, name + ".nii"), "rb") as f:
            return f.read()

    before = _stats(outer)
    assert cat("nested") == expected
    after_nested = _stats(outer)
    # refused as a backing file: opened for forwarded reads, which reached the daemon
    assert after_nested["passthrough_opens"] == before["passthrough_opens"]
    assert after_nested["rendered_opens"] == before["rendered_opens"] + 1
    assert after_nested["forwarded_reads"] > before["forwarded_reads"]

    for _ in range(2):  # a second open of the refused file takes the same route
        assert cat("plain") == expected
        assert cat("nested") == expected
    after = _stats(outer)
    # the other image of the same mount still goes through to its original: no read of it
    # reached the daemon, only the opens of the nested one were forwarded
    assert after["passthrough_opens"] == after_nested["passthrough_opens"] + 2
    assert after["rendered_opens"] == after_nested["rendered_opens"] + 2
    np.testing.assert_array_equal(
        nib.load(os.path.join(outer.dir, "nested.nii")).get_fdata(), data)
