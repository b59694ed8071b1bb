"""The client's conventions: errors by the protocol's kinds, images handed over removed when
the process exits (unless kept), the socket rule in one place, types shipped."""

import os
import subprocess
import sys
import textwrap

import pytest
from imgfs_testlib import mount, needs_error_kinds  # noqa: F401 (mount: a fixture)

import imgfs
from imgfs._control import socket_path
from imgfs.errors import BY_KIND, from_answer

KINDS = ["bad_request", "bad_name", "unknown_name", "name_taken", "refused", "bad_file",
         "unavailable", "io", "busy", "internal"]


def test_every_protocol_kind_has_its_subclass():
    assert sorted(BY_KIND) == sorted(KINDS)
    for kind in KINDS:
        e = from_answer({"ok": False, "kind": kind, "error": f"{kind} happened"})
        assert type(e) is BY_KIND[kind] and isinstance(e, imgfs.ImgfsError)
        assert e.kind == kind and str(e) == f"{kind} happened"
    assert isinstance(from_answer({"kind": "name_taken", "error": "x"}), imgfs.NameTaken)


def test_a_missing_or_unknown_kind_gives_the_base_class():
    old = from_answer({"ok": False, "error": "image t1 exists already"})
    assert type(old) is imgfs.ImgfsError and old.kind is None
    assert str(old) == "image t1 exists already"
    new = from_answer({"ok": False, "kind": "from_the_future", "error": "m"})
    assert type(new) is imgfs.ImgfsError and new.kind == "from_the_future"


def test_daemon_refusals_raise_their_kind(mount, tmp_path):  # noqa: F811
    needs_error_kinds(mount)
    with pytest.raises(imgfs.UnknownName, match="no-such"):
        mount.path("no-such")
    mount.add(imgfs_data("anatomical.nii"), name="taken")
    try:
        with pytest.raises(imgfs.NameTaken):
            mount.add(imgfs_data("anatomical.nii"), name="taken")
    finally:
        mount.rm("taken")
    with pytest.raises(imgfs.BadRequest):
        mount.request("no_such_op")


def imgfs_data(name):
    from imgfs_testlib import data_file

    return data_file(name)


def _hand_over_and_exit(mount_dir, code):
    """Runs `code` in a fresh Python that hands images to `mount_dir` and prints their paths,
    then exits normally; the paths it printed."""
    prog = textwrap.dedent(f"""
        import numpy as np, nibabel as nib, imgfs
        def img(v):
            return nib.Nifti1Image(np.full((2, 2, 2), v, np.float32), np.eye(4))
        m = {mount_dir!r}
    """) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_images_handed_over_go_when_the_process_exits(mount):  # noqa: F811
    paths = _hand_over_and_exit(mount.dir, """
        print(imgfs.as_filename(img(1), m))
        print(imgfs.put(img(2), m)["path"])
        print(imgfs.as_filename(img(3), m, keep=True))
    """)
    assert len(paths) == 3 and all(os.path.dirname(p) == mount.dir for p in paths)
    names = {i["name"] for i in mount.ls()}
    gone, kept = [os.path.basename(p)[:-4] for p in paths[:2]], os.path.basename(paths[2])[:-4]
    assert not names & set(gone), names
    assert kept in names and os.path.exists(paths[2])
    mount.rm(kept)


def test_keep_on_a_later_handoff_keeps_it(mount):  # noqa: F811
    (path,) = _hand_over_and_exit(mount.dir, """
        i = img(1)
        imgfs.as_filename(i, m)
        i.get_fdata()[...] = 4
        print(imgfs.as_filename(i, m, keep=True))
    """)
    name = os.path.basename(path)[:-4]
    assert name in {i["name"] for i in mount.ls()}
    mount.rm(name)


def test_images_removed_by_hand_are_not_removed_again(mount):  # noqa: F811
    # the process removes its image and another client takes the name: exit must not touch it
    (path,) = _hand_over_and_exit(mount.dir, """
        mm = imgfs.Mount(m)
        p = imgfs.as_filename(img(1), mm)
        name = p.rsplit("/", 1)[1][:-4]
        mm.rm(name)
        mm.put(name, nib.Nifti1Header().binaryblock, np.eye(4), np.zeros((2, 2, 2), np.float32))
        print(p)
    """)
    name = os.path.basename(path)[:-4]
    assert name in {i["name"] for i in mount.ls()}
    mount.rm(name)


def test_socket_rule_matches_the_daemon_for_any_directory_name(tmp_path):
    # the one Python copy of the socket-key rule finds the daemon whatever bytes the name has
    odd = tmp_path / "a b\\c\tü"
    odd.mkdir()
    with imgfs.Mount(odd) as m:
        assert m.owned
        assert os.path.exists(socket_path(odd))
        assert m.ping()["mount"] == str(odd)
    assert not os.path.ismount(odd)


def test_the_package_ships_its_types():
    pkg = os.path.dirname(imgfs.__file__)
    assert os.path.isfile(os.path.join(pkg, "py.typed"))
    assert imgfs.as_filename.__annotations__["return"] in ("str", str)
