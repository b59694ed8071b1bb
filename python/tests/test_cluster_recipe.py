"""Images that travel as recipes (imgfs.recipe): small pickles, rendered on the other side from
the shared original, refused when the original changed."""

import os
import pickle
import subprocess
import sys
import textwrap

import cloudpickle
import nibabel as nib
import numpy as np
import pytest
from imgfs_testlib import in_mount, mount, write_image  # noqa: F401 (mount: a fixture)

import imgfs


def _sparse_image(path, shape, dtype=np.float32):
    """A real NIfTI of `shape` without writing its data: the header, then a hole up to the
    size nibabel expects (reads as zeros)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=2)
    hdr["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        f.truncate(352 + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return str(path)


def test_a_header_edited_512_mib_image_pickles_in_64_kib(tmp_path):
    path = _sparse_image(tmp_path / "big.nii", (512, 512, 512))  # float32: 512 MiB
    assert os.path.getsize(path) == 352 + 512 * 2**20
    img = imgfs.load(path)
    img.header["descrip"] = b"edited"
    img.set_sform(np.diag([1.5, 1.5, 1.5, 1.0]), code=2)
    for dumps in (pickle.dumps, cloudpickle.dumps):  # plain pickle, and dask's cloudpickle
        blob = dumps(img)
        assert len(blob) <= 64 * 1024, len(blob)
        back = pickle.loads(blob)
        assert imgfs.recipe.received(back) is not None
        assert back.shape == (512, 512, 512) and back.header["descrip"] == b"edited"
        assert np.allclose(back.affine, np.diag([1.5, 1.5, 1.5, 1.0]))


def test_an_image_whose_data_changed_travels_as_its_array(tmp_path):
    img = imgfs.load(write_image(tmp_path / "a.nii", np.zeros((4, 4, 4), np.float32)))
    img.get_fdata()[1, 2, 3] = 7
    back = pickle.loads(pickle.dumps(img))
    assert imgfs.recipe.received(back) is None
    assert isinstance(back.dataobj, np.ndarray) and back.get_fdata()[1, 2, 3] == 7


def test_a_recipe_is_rendered_from_the_original_by_the_other_process(tmp_path, mount):  # noqa: F811
    src = write_image(tmp_path / "b.nii", np.arange(60, dtype=np.float32).reshape(5, 4, 3))
    img = imgfs.load(src)
    img.header["descrip"] = b"travelled"
    img.set_data_dtype(np.int16)
    blob = tmp_path / "b.pkl"
    blob.write_bytes(pickle.dumps(img))
    prog = textwrap.dedent(f"""
        import pickle, json, nibabel as nib, imgfs
        img = pickle.load(open({str(blob)!r}, "rb"))
        path = imgfs.as_filename(img, {mount.dir!r}, keep=True)
        (entry,) = [i for i in imgfs.Mount({mount.dir!r}).ls() if i["path"] == path]
        print(json.dumps([path, entry["origin"], entry["name"]]))
    """)
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    import json

    path, origin, name = json.loads(done.stdout)
    assert in_mount(mount, path) and origin == src  # added from the original, not sent
    served = nib.load(path)
    assert served.header["descrip"] == b"travelled"
    assert served.get_data_dtype() == np.int16
    assert np.allclose(served.get_fdata(), np.arange(60).reshape(5, 4, 3), atol=0.01)
    mount.rm(name)


@pytest.mark.parametrize("change", ["rewrite", "touch", "same-size-mtime-back", "remove"])
def test_a_recipe_whose_original_changed_is_refused_with_the_reason(tmp_path, mount, change):  # noqa: F811
    src = write_image(tmp_path / "c.nii", np.ones((4, 4, 4), np.float32))
    img = imgfs.load(src)
    img.header["descrip"] = b"edited"
    blob = pickle.dumps(img)
    st = os.stat(src)
    if change == "rewrite":
        write_image(src, np.zeros((5, 4, 4), np.float32))
        why = "size was"
    elif change == "touch":
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        why = "modification time was"
    elif change == "same-size-mtime-back":
        write_image(src, np.full((4, 4, 4), 2, np.float32))
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.path.getsize(src) == st.st_size
        why = "sampled content differs"
    else:
        os.unlink(src)
        why = "no longer exists"
    before = mount.stats()["images"]
    back = pickle.loads(blob)
    with pytest.raises(imgfs.OriginalChanged) as e:
        imgfs.as_filename(back, mount)
    assert src in str(e.value) and why in str(e.value), str(e.value)
    assert isinstance(e.value, imgfs.Unavailable)
    assert mount.stats()["images"] == before  # nothing was served
