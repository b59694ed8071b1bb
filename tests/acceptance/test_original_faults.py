"""Originals that change, vanish or were broken from the start, read through a real mount.

What the README's "What the mount guarantees" promises, cell by cell: a reader of a clean
passthrough file sees what the original's file sees; every other reader gets the bytes of the
file that was loaded or EIO, never mixed or stale bytes; `ls` says why; the daemon keeps
serving the other images.
"""
import errno
import gzip
import io
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

import helpers
from helpers import describe, imgfs

SHAPE = (128, 128, 128)  # int16: 4 MiB of data, more than the kernel reads ahead on an open


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


class Mounted:
    def __init__(self, path):
        self.path = str(path)

    def __call__(self, *args):
        return imgfs(*args, "--mount", self.path)

    def file(self, name):
        return os.path.join(self.path, f"{name}.nii")

    def ls(self):
        return {i["name"]: i for i in json.loads(ok(self("ls", "--json")).stdout)}

    def stats(self):
        return json.loads(ok(self("stats", "--json")).stdout)


@pytest.fixture(scope="module")
def mnt(tmp_path_factory, imgfs_bin):
    path = tmp_path_factory.mktemp("faults") / "m"
    ok(imgfs("mount", str(path)))
    m = Mounted(path)
    ok(m("add", "control=" + os.path.join(helpers.NIB_DATA, "functional.nii")))
    yield m
    imgfs("unmount", str(path))


def control_still_served(mnt):
    assert nib.load(mnt.file("control")).shape == (17, 21, 3, 20)


def write_original(path, seed):
    data = np.random.default_rng(seed).integers(-30000, 30000, SHAPE, dtype=np.int16)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=np.int16)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)
    return data


def read_all(fd):
    """Everything a reader gets from fd, and the errno that stopped it (None at the end)."""
    got = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except OSError as e:
            return bytes(got), e.errno
        if not chunk:
            return bytes(got), None
        got += chunk


FAULTS = ["truncated", "deleted", "replaced", "rewritten"]
EDITS = ["clean", "header", "datatype"]


def apply_fault(fault, path, tmp_path):
    if fault == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif fault == "deleted":
        os.remove(path)
    elif fault == "replaced":
        other = str(tmp_path / "other.nii")
        write_original(other, seed=99)
        os.replace(other, path)
    elif fault == "rewritten":
        # Same size, other bytes, the mtime set back: only the change time shows it.
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(352)
            f.write(np.random.default_rng(7).bytes(st.st_size - 352))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == st.st_mtime_ns


REASON = {"truncated": "modified on disk since load", "deleted": "is gone since load",
          "replaced": "replaced on disk since load", "rewritten": "modified on disk since load"}


@pytest.mark.parametrize("open_before", [False, True], ids=["opened-after", "open-before"])
@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_changed_original_never_serves_mixed_bytes(mnt, tmp_path, fault, edit, open_before):
    name = f"{fault}-{edit}-{int(open_before)}"
    src = str(tmp_path / "orig.nii")
    data = write_original(src, seed=1)
    with open(src, "rb") as f:
        original = f.read()
    ok(mnt("add", f"{name}={src}"))
    if edit == "header":
        ok(mnt("set", name, "descrip=edited"))
        expected_data = original[352:]
    elif edit == "datatype":
        ok(mnt("set", name, "datatype=float32"))
        expected_data = data.astype("<f4").tobytes(order="F")
    else:
        expected_data = original[352:]

    head = b""
    passthrough = False
    if open_before:
        opens = mnt.stats()["passthrough_opens"]
        fd = os.open(mnt.file(name), os.O_RDONLY)
        # Kernel passthrough needs CAP_SYS_ADMIN: an ordinary user's mount forwards reads.
        passthrough = mnt.stats()["passthrough_opens"] > opens
        head = os.read(fd, 352)  # the kernel reads ahead from here: part of the data is cached
    apply_fault(fault, src, tmp_path)
    if not open_before:
        fd = os.open(mnt.file(name), os.O_RDONLY)
    try:
        rest, err = read_all(fd)
    finally:
        os.close(fd)
    served = head + rest

    if edit == "clean" and open_before and passthrough:
        # Passthrough: this reader reads the original's file, whatever became of it.
        if fault in ("deleted", "replaced"):
            want = original  # the file it opened, still open
        else:
            with open(src, "rb") as f:
                want = f.read()
        assert err is None and served == want
    elif fault in ("deleted", "replaced"):
        # The file that was loaded stays open: its data, whole.
        assert err is None, os.strerror(err)
        assert served[352:] == expected_data
    else:
        # Truncated or rewritten: the loaded data are gone; refused, after at most a part of
        # the version read before the change.
        assert err == errno.EIO, f"read ended with {err and os.strerror(err)} after {len(served)}"
        assert len(served) < 352 + len(expected_data)
        assert served[352:] == expected_data[: max(0, len(served) - 352)]
    if len(served) >= 348:
        descrip = nib.Nifti1Header.from_fileobj(io.BytesIO(served[:348]))["descrip"]
        assert (descrip == b"edited") == (edit == "header")

    info = mnt.ls()[name]
    assert not info["clean"]
    assert any(REASON[fault] in r for r in info["reasons"]), info
    control_still_served(mnt)


MALFORMED = os.path.join(helpers.REPO, "tests", "data", "malformed")


@pytest.mark.parametrize("name, message", [
    ("gz_vox_offset_2g.nii.gz", "vox_offset 2147483648 is past the end of the gzip stream"),
    ("gz_vox_offset_1e30.nii.gz", "is beyond the end of any file"),
    ("gz_ext_esize_2g.nii.gz", "extension 0 (esize 2147483632 at byte 352) runs past the end"),
])
def test_a_gzip_whose_size_fields_exceed_the_stream_is_refused_at_add(mnt, name, message):
    path = os.path.join(MALFORMED, name)
    proc = mnt("add", f"hostile={path}")
    assert proc.returncode == 1, describe(proc)
    assert path in proc.stderr and message in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr
    assert "hostile" not in mnt.ls()
    control_still_served(mnt)


def broken_gzip(tmp_path, kind, damage):
    """A gzip original whose header loads but whose data stream is cut or corrupt."""
    data = np.arange(32 * 32 * 32, dtype=np.float32).reshape((32, 32, 32))
    suffix = ".nii.gz" if kind == "single" else ".img.gz"
    img_cls = nib.Nifti1Image if kind == "single" else nib.Nifti1Pair
    path = str(tmp_path / f"broken{suffix}")
    nib.save(img_cls(data, np.eye(4)), path)
    packed = open(path, "rb").read()
    if damage == "truncated":
        packed = packed[: len(packed) * 2 // 3]
    else:
        keep = len(packed) // 2
        packed = packed[:keep] + bytes(b ^ 0x5A for b in packed[keep : keep + 64]) + packed[keep + 64 :]
    with open(path, "wb") as f:
        f.write(packed)
    return path if kind == "single" else path.replace(".img.gz", ".hdr.gz")


WANT = {"truncated": "gzip stream ends at byte", "corrupt": "gzip stream is corrupt"}


@pytest.mark.parametrize("kind", ["single", "pair"])
def test_a_cut_gzip_original_is_refused_at_add(mnt, tmp_path, kind):
    """A cut stream ends in compressed bytes, not in the trailer that holds the stream's length:
    that mismatch makes `add` pass over the stream, and the cut is named at once."""
    path = broken_gzip(tmp_path, kind, "truncated")
    proc = mnt("add", f"cut-{kind}={path}")
    data_file = path.replace(".hdr.gz", ".img.gz")
    assert proc.returncode == 1, describe(proc)
    assert "gzip stream ends at byte" in proc.stderr and data_file in proc.stderr, describe(proc)
    assert f"cut-{kind}" not in mnt.ls()
    control_still_served(mnt)


@pytest.mark.parametrize("found_by", ["read", "set-datatype", "save"])
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_a_corrupt_gzip_original_is_named_in_its_state_and_refused(mnt, tmp_path, kind,
                                                                   found_by):
    """A stream corrupt in its middle keeps its trailer, so `add` (headers only) cannot know;
    the first pass over the data names the damage."""
    damage = "corrupt"
    path = broken_gzip(tmp_path, kind, damage)
    name = f"gz-{kind}-{damage}-{found_by}"
    ok(mnt("add", f"{name}={path}"))  # headers only: nothing is known yet
    assert mnt.ls()[name]["clean"]
    want = WANT[damage]
    data_file = path.replace(".hdr.gz", ".img.gz")
    if found_by == "read":
        # The kernel's first read reaches into the data: nibabel cannot even sniff the header.
        with pytest.raises((OSError, nib.filebasedimages.ImageFileError)) as err:
            nib.load(mnt.file(name)).get_fdata()
        assert "Cannot work out file type" in str(err.value) or err.value.errno == errno.EIO
    elif found_by == "set-datatype":
        proc = mnt("set", name, "datatype=int16")
        assert proc.returncode == 1 and want in proc.stderr and data_file in proc.stderr, \
            describe(proc)
    else:
        out = str(tmp_path / "saved.nii")
        proc = mnt("save", name, out)
        assert proc.returncode == 1 and want in proc.stderr and data_file in proc.stderr, \
            describe(proc)
        assert not os.path.exists(out)
    info = mnt.ls()[name]
    assert not info["clean"] and info["state"].startswith("dirty: data cannot be read: ")
    assert any(want in r and data_file in r for r in info["reasons"]), info
    proc = mnt("path", name)
    assert proc.returncode == 1 and want in proc.stderr, describe(proc)
    with pytest.raises(OSError) as err:
        with open(mnt.file(name), "rb") as f:
            f.read()
    assert err.value.errno == errno.EIO
    control_still_served(mnt)


def test_a_multi_member_gzip_original_is_served_whole(mnt, tmp_path):
    """Several gzip members (as bgzip writes): the last trailer holds only the last member's
    length, so `add` checks the stream by a pass, and the image is served whole."""
    import gzip

    data = np.arange(16 * 16 * 16, dtype=np.int16).reshape((16, 16, 16))
    plain = str(tmp_path / "plain.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), plain)
    raw = open(plain, "rb").read()
    path = str(tmp_path / "members.nii.gz")
    with open(path, "wb") as f:
        for i in range(0, len(raw), 3000):
            f.write(gzip.compress(raw[i:i + 3000]))
    ok(mnt("add", f"members={path}"))
    ok(mnt("set", "members", "descrip=members"))
    served = nib.load(mnt.file("members"))
    np.testing.assert_array_equal(served.get_fdata(), data)
    reasons = mnt.ls()["members"]["reasons"]
    assert len(reasons) == 1 and "descrip" in reasons[0], reasons
    ok(mnt("rm", "members"))
