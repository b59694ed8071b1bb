"""Mount's thin wrappers over the control protocol, and starting/attaching."""

import os

import nibabel as nib
import numpy as np
import pytest
from imgfs_testlib import data_file, in_mount, mount  # noqa: F401 (mount: a fixture)

import imgfs


def test_attach_to_running_mount_does_not_own_it(mount):
    with imgfs.Mount(mount.dir) as other:
        assert not other.owned
        assert other.ping()["mount"] == mount.dir
    assert mount.ping()["mount"] == mount.dir  # still there


def test_env_selects_the_mount(mount, monkeypatch):
    monkeypatch.setenv("IMGFS_MOUNT", mount.dir)
    with imgfs.Mount() as m:
        assert m.dir == mount.dir and not m.owned


def test_add_path_set_mark_rm(mount, tmp_path):
    src = data_file("anatomical.nii")
    s = mount.add(src, name="anat-wrap")
    assert s["name"] == "anat-wrap" and s["clean"]
    assert mount.path("anat-wrap") == src
    assert "anat-wrap" in {i["name"] for i in mount.ls()}

    s = mount.set("anat-wrap", descrip="via set", datatype="float32")
    assert not s["clean"]
    served = mount.path("anat-wrap")
    assert in_mount(mount, served)
    back = mount.load("anat-wrap")
    assert back.header["descrip"] == b"via set"
    assert back.get_data_dtype().newbyteorder("=") == np.float32  # big-endian kept
    assert np.allclose(back.get_fdata(), nib.load(src).get_fdata())

    out = mount.save("anat-wrap", tmp_path / "saved.nii")
    assert nib.load(out).header["descrip"] == b"via set"

    assert mount.mark("anat-wrap", "clean")["clean"]
    assert mount.path("anat-wrap") == src
    mount.rm("anat-wrap")
    assert "anat-wrap" not in {i["name"] for i in mount.ls()}


def test_daemon_errors_raise_with_its_message(mount):
    with pytest.raises(imgfs.ImgfsError, match="no-such-image"):
        mount.path("no-such-image")
    with pytest.raises(imgfs.ImgfsError):
        mount.add("/nonexistent/file.nii")
    assert mount.ping()  # a bad request never stops the mount


def test_stats_counts_reads(mount):
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    path = imgfs.as_filename(img, mount)
    before = mount.stats()
    nib.load(path).get_fdata()
    after = mount.stats()
    assert after["rendered_opens"] + after["passthrough_opens"] > (
        before["rendered_opens"] + before["passthrough_opens"]
    )
    assert set(after) >= {"passthrough_opens", "rendered_opens", "forwarded_reads", "rendered_reads", "images"}


def test_socket_path_follows_protocol(monkeypatch):
    from imgfs._control import socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    # FNV-1a 64 of "/a/b" written as 16 hex digits
    h = 0xCBF29CE484222325
    for b in b"/a/b":
        h = ((h ^ b) * 0x100000001B3) % 2**64
    assert socket_path("/a/./x/../b") == f"/run/user/1000/imgfs-control/{h:016x}.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert socket_path("/a/b").startswith(f"/tmp/imgfs-control-{os.getuid()}/")
