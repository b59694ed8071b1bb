"""The mount, end to end: a real FUSE mount driven by the imgfs CLI, read by nibabel,
nifti_tool and MRtrix3 through the kernel."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import nibabel as nib
import numpy as np
import pytest

import helpers
from helpers import describe, imgfs

CORPUS_NIFTI1 = ["anatomical.nii", "example4d.nii.gz", "functional.nii", "standard.nii.gz",
                 "reoriented_anat_moved.nii"]
CORPUS_NIFTI2 = ["example_nifti2.nii.gz"]


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


class MountedDir:
    def __init__(self, path):
        self.path = str(path)

    def __call__(self, *args, **kw):
        return imgfs(*args, "--mount", self.path, **kw)

    def file(self, name):
        return os.path.join(self.path, f"{name}.nii")

    def stats(self):
        return json.loads(ok(self("stats", "--json")).stdout)

    def ls(self):
        return {i["name"]: i for i in json.loads(ok(self("ls", "--json")).stdout)}

    def daemon_pid(self):
        out = subprocess.run(["pgrep", "-f", f"imgfs mount {self.path} --foreground"],
                             capture_output=True, text=True).stdout.split()
        # The daemon's watchdog is a fork with the same command line, named apart.
        return next(int(p) for p in out
                    if open(f"/proc/{p}/comm").read().strip() != "imgfs-watchdog")


def start_mount(path):
    proc = imgfs("mount", path)
    assert proc.returncode == 0, describe(proc)
    assert is_mounted(path)
    return MountedDir(path)


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mnt") / "m"
    m = start_mount(path)
    yield m
    imgfs("unmount", path)


@pytest.fixture(scope="module")
def image4d(tmp_path_factory):
    """A 4D float32 image with scaling-free, non-trivial values."""
    d = tmp_path_factory.mktemp("img4d")
    rng = np.random.default_rng(3)
    data = rng.normal(100, 20, size=(20, 22, 14, 6)).astype(np.float32)
    aff = np.diag([2.0, 2.5, 3.0, 1.0])
    aff[:3, 3] = [-20, -27, -21]
    img = nib.Nifti1Image(data, aff)
    img.header.set_xyzt_units("mm", "sec")
    path = str(d / "four_d.nii")
    nib.save(img, path)
    return path


def sources(image4d):
    items = [(n, os.path.join(helpers.NIB_DATA, n)) for n in CORPUS_NIFTI1 + CORPUS_NIFTI2]
    return items + [("four_d", image4d)]


def expected_data(path):
    return nib.load(path).get_fdata()


def check_readers(path, want_shape, want_affine, want_data, tol, nifti2=False):
    """nibabel, nifti_tool, mrinfo and mrstats all read `path` as expected."""
    img = nib.load(path)
    assert img.shape == want_shape
    np.testing.assert_allclose(img.affine, want_affine, atol=1e-4)
    got = img.get_fdata()
    if tol == 0:
        assert np.array_equal(got, want_data, equal_nan=True)
    else:
        assert np.nanmax(np.abs(got - want_data)) <= tol
    if nifti2:
        dims = helpers.disp_nim_dims(path)
        assert dims[1:1 + len(want_shape)] == list(want_shape)
        return
    out = helpers.nifti_tool("-check_hdr", "-check_nim", "-infiles", path).stdout
    assert "header IS GOOD" in out and "nifti_image IS GOOD" in out, out
    size = ok(helpers.mrinfo("-size", path)).stdout.split()
    assert [int(s) for s in size] == list(want_shape)
    zooms = [float(s) for s in ok(helpers.mrinfo("-spacing", path)).stdout.split()]
    np.testing.assert_allclose(zooms[:3], img.header.get_zooms()[:3], rtol=1e-5)
    stats = ok(helpers.run(["mrstats", "-output", "mean", "-allvolumes", path])).stdout.split()
    # MRtrix3 averages finite voxels of the whole image.
    finite = np.isfinite(want_data)
    np.testing.assert_allclose(float(stats[0]), want_data[finite].mean(), rtol=1e-3,
                               atol=max(tol, 1e-3))


@pytest.mark.parametrize("which", ["clean", "header_edit", "datatype"])
def test_images_through_the_mount(mnt, image4d, which):
    for name, src in sources(image4d):
        tag = f"{name.split('.')[0]}-{which}"
        ok(mnt("add", f"{tag}={src}"))
        orig = nib.load(src)
        want = expected_data(src)
        affine = orig.affine.copy()
        tol = 0
        if which == "header_edit":
            affine[:3, 3] += [1.5, -2.0, 3.0]
            rows = [",".join(repr(float(x)) for x in affine[i]) for i in range(3)]
            ok(mnt("set", tag, "descrip=edited through imgfs", "sform_code=2",
                   f"srow_x={rows[0]}", f"srow_y={rows[1]}", f"srow_z={rows[2]}"))
        elif which == "datatype":
            new = "float32" if orig.get_data_dtype().kind in "iu" else "int16"
            ok(mnt("set", tag, f"datatype={new}"))
            if new == "int16":
                tol = (np.nanmax(want) - np.nanmin(want)) / 65535 * 0.51
            else:  # scaled integers become float32 values: float32 rounding only
                tol = np.nanmax(np.abs(want)) * 2 ** -23
        path = mnt.file(tag)
        state = mnt.ls()[tag]
        assert state["clean"] == (which == "clean"), state
        check_readers(path, orig.shape, affine, want, tol, nifti2=name in CORPUS_NIFTI2)
        if which == "header_edit":
            assert nib.load(path).header["descrip"] == b"edited through imgfs"
            assert "header field descrip changed" in state["state"]
        if which == "datatype":
            assert nib.load(path).get_data_dtype().name == new


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.mark.skipif(os.geteuid() != 0, reason="FUSE passthrough needs CAP_SYS_ADMIN")
def test_a_clean_nii_is_byte_identical_and_served_by_passthrough(mnt):
    src = os.path.join(helpers.NIB_DATA, "functional.nii")
    ok(mnt("add", f"pt={src}"))
    before = mnt.stats()["passthrough_opens"]
    with open(mnt.file("pt"), "rb") as f:
        served = f.read()
    with open(src, "rb") as f:
        assert served == f.read()
    assert mnt.stats()["passthrough_opens"] == before + 1
    assert mnt.ls()["pt"]["served_as"] == "passthrough"


def test_path_is_the_original_while_clean_and_mark_clean_brings_it_back(mnt):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    ok(mnt("add", f"pathy={src}"))
    assert ok(mnt("path", "pathy")).stdout.strip() == src
    ok(mnt("set", "pathy", "descrip=changed"))
    assert ok(mnt("path", "pathy")).stdout.strip() == mnt.file("pathy")
    out = ok(mnt("mark", "pathy", "clean")).stdout
    assert out.strip() == "clean"
    assert ok(mnt("path", "pathy")).stdout.strip() == src
    ok(mnt("mark", "pathy", "dirty"))
    assert ok(mnt("path", "pathy")).stdout.strip() == mnt.file("pathy")


def test_an_open_file_reads_its_version_and_a_later_open_the_new_one(mnt, image4d):
    ok(mnt("add", f"versions={image4d}"))
    ok(mnt("set", "versions", "descrip=first"))
    with open(mnt.file("versions"), "rb") as early:
        head = early.read(352)
        assert head[148:153] == b"first"
        ok(mnt("set", "versions", "descrip=second", "datatype=int16"))
        rest = early.read()
        with open(mnt.file("versions"), "rb") as late:
            assert late.read(352)[148:154] == b"second"
    # The early reader got one complete, consistent float32 file.
    whole = head + rest
    with open(image4d, "rb") as f:
        assert whole[352:] == f.read()[352:]


def test_modifying_the_original_dirties_the_image_and_never_serves_mixed_bytes(mnt, tmp_path):
    src = str(tmp_path / "victim.nii")
    shutil.copyfile(os.path.join(helpers.NIB_DATA, "anatomical.nii"), src)
    ok(mnt("add", f"victim={src}"))
    ok(mnt("set", "victim", "descrip=header only"))
    time.sleep(0.02)
    with open(src, "r+b") as f:
        f.seek(2000)
        f.write(b"\x7f" * 64)
    state = mnt.ls()["victim"]
    assert not state["clean"]
    assert any("modified on disk since load" in r for r in state["reasons"]), state
    with pytest.raises(OSError) as err:
        with open(mnt.file("victim"), "rb") as f:
            f.read()
    assert err.value.errno == 5  # EIO
    assert ok(mnt("path", "victim")).stdout.strip() == mnt.file("victim")


def test_replacing_the_original_dirties_the_image_and_serves_what_was_loaded(mnt, tmp_path):
    src = str(tmp_path / "replaced.nii")
    orig = os.path.join(helpers.NIB_DATA, "functional.nii")
    shutil.copyfile(orig, src)
    ok(mnt("add", f"replaced={src}"))
    other = str(tmp_path / "other.nii")
    shutil.copyfile(os.path.join(helpers.NIB_DATA, "anatomical.nii"), other)
    os.replace(other, src)
    state = mnt.ls()["replaced"]
    assert any("replaced on disk since load" in r for r in state["reasons"]), state
    assert state["served_as"] == "rendered"
    assert np.array_equal(nib.load(mnt.file("replaced")).get_fdata(), nib.load(orig).get_fdata())


def test_mrregister_reads_one_input_from_the_mount(mnt, tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    ok(mnt("add", f"moving={src}"))
    ok(mnt("set", "moving", "descrip=moving image"))
    out = str(tmp_path / "rigid.txt")
    proc = helpers.run(["mrregister", mnt.file("moving"), src, "-type", "rigid",
                        "-rigid", out, "-force", "-quiet"], timeout=300)
    assert proc.returncode == 0, describe(proc)
    matrix = np.loadtxt(out, comments="#")
    # The same image on both sides: the rigid transform is close to the identity.
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=0.05)


@pytest.mark.parametrize("args, message", [
    (["path", "nosuch"], "no image named 'nosuch'"),
    (["set", "good", "nosuchfield=1"], "unknown header field 'nosuchfield'"),
    (["set", "good", "datatype=float99"], "unknown datatype 'float99'"),
    (["set", "good", "sform_code=abc"], "sform_code"),
    (["set", "good", "dim=3,1,1,1,1,1,1,1"], "number of voxels"),
    (["add", "bad=/nonexistent/x.nii"], "/nonexistent/x.nii"),
    (["add", "bad=/etc/passwd"], "/etc/passwd"),
    (["add", "../evil=" + os.path.join(helpers.NIB_DATA, "anatomical.nii")], "bad image name"),
    (["mark", "good", "maybe"], "maybe"),
])
def test_a_bad_request_gets_a_clear_error_and_the_mount_keeps_serving(mnt, args, message):
    if "good" not in mnt.ls():
        ok(mnt("add", "good=" + os.path.join(helpers.NIB_DATA, "functional.nii")))
    proc = mnt(*args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr
    assert nib.load(mnt.file("good")).shape == (17, 21, 3, 20)


def test_a_malformed_file_is_refused_by_name(mnt):
    bad = os.path.join(helpers.REPO, "tests", "data", "malformed", "truncated_data.nii")
    proc = mnt("add", f"broken={bad}")
    assert proc.returncode == 1
    assert bad in proc.stderr and "too short" in proc.stderr, proc.stderr
    assert "broken" not in mnt.ls()


def test_kill_9_during_reads_fails_readers_removes_the_mount_and_allows_a_new_one(tmp_path):
    path = tmp_path / "killme"
    m = start_mount(path)
    big = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 64, 16), np.float32), np.eye(4)), str(big))
    ok(m("add", f"big={big}"))
    ok(m("set", "big", "datatype=int16"))
    pid = m.daemon_pid()
    results = []

    def reader():
        try:
            while True:
                with open(m.file("big"), "rb") as f:
                    while f.read(1 << 16):
                        pass
        except OSError as e:
            results.append(e.errno)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive(), "a reader hung after the daemon died"
    assert len(results) == 3
    for _ in range(100):
        if not is_mounted(path):
            break
        time.sleep(0.05)
    assert not is_mounted(path), "the mount outlived its daemon"
    m2 = start_mount(path)
    ok(m2("add", f"again={big}"))
    assert os.path.getsize(m2.file("again")) == os.path.getsize(big)
    ok(imgfs("unmount", path))
    assert not is_mounted(path)


def test_run_mounts_privately_runs_the_command_and_passes_its_status(tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    script = 'test "$(imgfs path x)" = "%s" && wc -c < "$IMGFS_MOUNT/x.nii" && exit 7' % src
    env = dict(os.environ, PATH=os.path.dirname(helpers.imgfs_bin()) + ":" + os.environ["PATH"])
    proc = subprocess.run([helpers.imgfs_bin(), "run", "--add", f"x={src}", "--", "sh", "-c",
                           script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 7, describe(proc)
    assert int(proc.stdout.split()[-1]) == os.path.getsize(src)


def test_the_mount_is_private_with_a_private_control_socket(mnt):
    from stat import S_IMODE
    st = os.stat(mnt.path)
    assert S_IMODE(st.st_mode) == 0o755  # writable by its owner (the default); others: see below
    sockets = [os.path.join(d, f) for d in ("/tmp/imgfs-control-%d" % os.getuid(),
               os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"), "imgfs-control"))
               if os.path.isdir(d) for f in os.listdir(d) if f.endswith(".sock")]
    assert sockets
    for s in sockets:
        assert S_IMODE(os.stat(s).st_mode) == 0o600
        assert S_IMODE(os.stat(os.path.dirname(s)).st_mode) == 0o700


def _as_nobody(*argv):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def public_dir():
    """A directory every user can enter (pytest's own tmp dirs are private to root)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="imgfs-acl-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@ROOT_ONLY  # acts as another user with setpriv
def test_only_the_mounting_user_can_read_the_mount_unless_allow_other(public_dir):
    src = os.path.join(public_dir, "shared.nii")
    shutil.copyfile(os.path.join(helpers.NIB_DATA, "functional.nii"), src)
    os.chmod(src, 0o644)
    # The original itself is readable by anyone: only the mount's access rule can refuse.
    assert _as_nobody("wc", "-c", src).returncode == 0
    private = start_mount(os.path.join(public_dir, "private"))
    try:
        ok(private("add", f"x={src}"))
        denied = _as_nobody("wc", "-c", private.file("x"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, describe(denied)
    finally:
        imgfs("unmount", private.path)

    proc = imgfs("mount", os.path.join(public_dir, "open"), "--allow-other")
    assert proc.returncode == 0, describe(proc)
    shared = MountedDir(os.path.join(public_dir, "open"))
    try:
        ok(shared("add", f"x={src}"))
        allowed = _as_nobody("wc", "-c", shared.file("x"))
        assert allowed.returncode == 0, describe(allowed)
        assert int(allowed.stdout.split()[0]) == os.path.getsize(src)
    finally:
        imgfs("unmount", shared.path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".hdr"])
def test_save_writes_the_edited_image_to_disk(mnt, tmp_path, suffix):
    src = os.path.join(helpers.NIB_DATA, "example4d.nii.gz")
    ok(mnt("add", f"tosave{suffix.replace('.', '_')}={src}"))
    name = f"tosave{suffix.replace('.', '_')}"
    ok(mnt("set", name, "descrip=saved by imgfs", "datatype=float32"))
    out = str(tmp_path / f"out{suffix}")
    ok(mnt("save", name, out))
    saved, orig = nib.load(out), nib.load(src)
    assert saved.header["descrip"] == b"saved by imgfs"
    assert saved.get_data_dtype() == np.float32
    assert np.array_equal(saved.get_fdata(), orig.get_fdata())
    np.testing.assert_allclose(saved.affine, orig.affine, atol=1e-5)
    # The edited image and the file it was saved to are the same NIfTI, byte for byte.
    if suffix == ".nii":
        with open(out, "rb") as a, open(mnt.file(name), "rb") as b:
            assert a.read() == b.read()


def test_show_and_rm(mnt):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    ok(mnt("add", f"shown={src}"))
    shown = json.loads(ok(mnt("show", "shown")).stdout)
    assert shown["header"]["descrip"] == "spm - 3D normalized"
    assert shown["shape"] == [33, 41, 25]
    assert len(shown["affine"]) == 4
    ok(mnt("rm", "shown"))
    assert "shown" not in mnt.ls()
    assert not os.path.exists(mnt.file("shown"))
    proc = mnt("rm", "shown")
    assert proc.returncode == 1 and "no image named 'shown'" in proc.stderr


def test_the_readme_demo_runs_the_main_job():
    """The README's first command: mount, load a sample, edit its header, read it with real
    readers through the mount, unmount."""
    proc = helpers.run(["bash", os.path.join(helpers.REPO, "scripts", "demo")], timeout=1800)
    assert proc.returncode == 0, describe(proc)
    out = proc.stdout
    assert "header IS GOOD" in out and "nifti_image IS GOOD" in out, out
    assert "edited in memory by imgfs" in out
    assert "values equal to the original: True" in out
    assert "Data type:         32 bit float" in out  # mrinfo saw the datatype change
    assert "demo finished" in out
    mounted = open("/proc/self/mountinfo").read()
    assert "imgfs-demo" not in mounted
