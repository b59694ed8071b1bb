"""Fixtures and helpers of the client tests: a real imgfs mount under a tmp dir, unmounted at
the end, and the readers that check what it serves.

Not a conftest.py on purpose: tests/acceptance has one and does `from conftest import ...`;
two conftest modules in one pytest run shadow each other. Test modules import from here, so each
module gets its own mount (module scope).
"""

import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

try:
    import imgfs
except ImportError:  # not installed (scripts/setup does `pip install -e ./python`): use the tree
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import imgfs

DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


@pytest.fixture(scope="module")
def mount(tmp_path_factory):
    mnt = tmp_path_factory.mktemp("imgfs") / "mnt"
    m = imgfs.Mount(mnt)
    assert m.owned, "the fixture must start its own mount, not reuse one"
    yield m
    m.close()
    assert not os.path.ismount(mnt)


@pytest.fixture
def images(mount):
    """Number of images in the mount right now (a callable, to compare before and after)."""
    return lambda: mount.stats()["images"]


def data_file(name):
    return os.path.join(DATA, name)


def write_image(path, data, affine=None, klass=nib.Nifti1Image, **kw):
    """A small image written by nibabel itself: the reference for 'its own file'."""
    if affine is None:
        affine = np.array([[2.0, 0, 0, -10], [0, 3, 0, -20], [0, 0, 4, 5], [0, 0, 0, 1]])
    nib.save(klass(data, affine, **kw), str(path))
    return str(path)


def run(*argv):
    exe = shutil.which(argv[0])
    assert exe, f"{argv[0]} is not installed (scripts/setup installs it)"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def assert_nifti_tool_good(path):
    """nifti_tool exits 0 even on failure: its verdict is in the output."""
    _, out = run("nifti_tool", "-check_hdr", "-check_nim", "-infiles", path)
    assert "header IS GOOD" in out and "nifti_image IS GOOD" in out, out


def nifti_tool_field(path, field, flag="-disp_hdr"):
    _, out = run("nifti_tool", flag, "-field", field, "-quiet", "-infiles", path)
    return out.strip()


def mrinfo(path, *opts):
    rc, out = run("mrinfo", *opts, path)
    assert rc == 0, out
    return out


def in_mount(mount, path):
    return os.path.dirname(path) == mount.dir


def needs_error_kinds(mount):
    """Skip unless the daemon answers errors with a `kind` (issue 11 item 9, another branch):
    before it, the client can only raise the base class, by design."""
    try:
        mount.request("no_such_op")
    except imgfs.ImgfsError as e:
        if e.kind is None:
            pytest.skip("this imgfs daemon sends no error kinds yet")
        return
    raise AssertionError("an unknown op was accepted")
