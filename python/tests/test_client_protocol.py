"""The control protocol seen from a client: descriptors travel with their own request only."""

import base64
import os

import nibabel as nib
import numpy as np
import pytest

from imgfs_testlib import imgfs, mount  # noqa: F401 (fixture)
from imgfs.mount import _fill
from imgfs.shm import new_memfd, seal_size


def _put_fields():
    h = nib.Nifti1Header()
    h.set_data_shape((2, 2, 2))
    h.set_data_dtype(np.float32)
    return dict(header=base64.b64encode(h.binaryblock).decode(), affine=np.eye(4).tolist(),
                shape=[2, 2, 2], dtype="float32")


def _memfd_of(value):
    fd = new_memfd("test")
    _fill(fd, np.full((2, 2, 2), value, np.float32))
    seal_size(fd)
    return fd


def test_a_refused_request_does_not_pass_its_descriptor_to_the_next(mount):  # noqa: F811
    with pytest.raises(imgfs.ImgfsError, match="unknown field `bogus`"):
        mount.request("put", fds=[_memfd_of(1)], name="refused", bogus=1, **_put_fields())
    summary = mount.request("put", fds=[_memfd_of(2)], name="accepted", **_put_fields())
    assert np.unique(nib.load(summary["path"]).get_fdata()).tolist() == [2.0]


def test_a_put_without_a_descriptor_is_refused(mount):  # noqa: F811
    with pytest.raises(imgfs.ImgfsError, match="file descriptor"):
        mount.request("put", name="nofd", **_put_fields())
