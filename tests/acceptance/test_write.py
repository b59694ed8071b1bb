"""Writing into the mount: tools create, write, rename and remove files in DIR (and its
subdirectories), held in memory by the daemon, read back through the kernel as from tmpfs.
Also runs unprivileged (scripts/test's `unprivileged` step)."""
import errno
import mmap
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

import helpers
from helpers import describe, imgfs


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


def mount(path, *extra):
    ok(imgfs("mount", path, *extra))
    return str(path)


@pytest.fixture
def mnt(tmp_path):
    path = mount(tmp_path / "m")
    yield path
    ok(imgfs("unmount", path))


@pytest.fixture
def small(tmp_path):
    """A mount whose written files may hold 1 MiB."""
    path = mount(tmp_path / "s", "--max-memory", "1M")
    yield path
    ok(imgfs("unmount", path))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_written_file_reads_back_and_seeks(mnt):
    p = os.path.join(mnt, "notes.txt")
    with open(p, "wb") as f:
        f.write(b"hello world")
        f.seek(6)
        f.write(b"WORLD")
    assert read(p) == b"hello WORLD"
    assert os.stat(p).st_size == 11
    assert "notes.txt" in os.listdir(mnt)
    with open(p, "r+b") as f:
        f.seek(6)
        assert f.read(5) == b"WORLD"


def test_rename_over_an_existing_file_replaces_it(mnt):
    a, b = os.path.join(mnt, "a.txt"), os.path.join(mnt, "b.txt")
    open(a, "wb").write(b"new")
    open(b, "wb").write(b"old contents")
    os.rename(a, b)
    assert read(b) == b"new"
    assert not os.path.exists(a)
    assert sorted(os.listdir(mnt)) == ["b.txt"]


def test_unlink_while_a_reader_has_the_file_open_keeps_its_bytes(mnt):
    p = os.path.join(mnt, "gone.bin")
    payload = os.urandom(300_000)
    open(p, "wb").write(payload)
    with open(p, "rb") as f:
        os.unlink(p)
        assert not os.path.exists(p)
        assert f.read() == payload


def test_truncate_shrinks_and_extends_with_zeros(mnt):
    p = os.path.join(mnt, "t.bin")
    open(p, "wb").write(b"0123456789")
    os.truncate(p, 4)
    assert read(p) == b"0123"
    os.truncate(p, 8)
    assert read(p) == b"0123\0\0\0\0"
    with open(p, "wb"):  # O_TRUNC
        pass
    assert read(p) == b""


def test_sparse_writes_read_as_zeros_in_the_hole(mnt):
    p = os.path.join(mnt, "sparse.bin")
    with open(p, "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    data = read(p)
    assert len(data) == (5 << 20) + 3
    assert data[-3:] == b"end" and data[: 5 << 20].count(0) == 5 << 20


def test_o_append_writes_at_the_end(mnt):
    p = os.path.join(mnt, "log.txt")
    open(p, "wb").write(b"one\n")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"two\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read(p) == b"one\ntwo\n"


def test_writes_through_a_shared_mapping_reach_the_file(mnt):
    p = os.path.join(mnt, "mapped.bin")
    size = 3 * 4096 + 100
    with open(p, "w+b") as f:
        f.truncate(size)
        m = mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[:5] = b"first"
        m[size - 4:] = b"last"
        m.flush()
        m.close()
    data = read(p)
    assert len(data) == size and data[:5] == b"first" and data[-4:] == b"last"


def test_subdirectories_hold_files_and_refuse_rmdir_until_empty(mnt):
    d = os.path.join(mnt, "out", "deeper")
    os.makedirs(d)
    p = os.path.join(d, "x.txt")
    open(p, "wb").write(b"x")
    assert os.listdir(os.path.join(mnt, "out")) == ["deeper"]
    assert read(p) == b"x"
    with pytest.raises(OSError) as e:
        os.rmdir(d)
    assert e.value.errno == errno.ENOTEMPTY
    os.rename(p, os.path.join(mnt, "x.txt"))
    os.rmdir(d)
    os.rmdir(os.path.join(mnt, "out"))
    assert os.listdir(mnt) == ["x.txt"]


def test_enospc_past_max_memory_keeps_every_other_file_and_image(small, tmp_path):
    src = tmp_path / "img.nii"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), src)
    ok(imgfs("add", f"img={src}", "--mount", small))
    kept = os.path.join(small, "kept.bin")
    kept_bytes = os.urandom(600_000)
    open(kept, "wb").write(kept_bytes)
    big = os.path.join(small, "big.bin")
    with pytest.raises(OSError) as e:
        with open(big, "wb") as f:
            f.write(os.urandom(600_000))
            f.flush()
    assert e.value.errno == errno.ENOSPC
    assert read(kept) == kept_bytes
    assert nib.load(os.path.join(small, "img.nii")).get_fdata().sum() == sum(range(24))
    # Freeing memory makes room again.
    os.unlink(big)
    os.unlink(kept)
    open(big, "wb").write(b"z" * 600_000)
    assert os.path.getsize(big) == 600_000


def test_statfs_shows_the_memory_written_files_use(small):
    before = os.statvfs(small)
    assert before.f_blocks * before.f_frsize == 1 << 20
    open(os.path.join(small, "f.bin"), "wb").write(b"a" * 409600)
    after = os.statvfs(small)
    assert (before.f_bfree - after.f_bfree) * after.f_frsize == 409600


def test_an_added_images_file_is_never_written_through(mnt, tmp_path):
    src = tmp_path / "orig.nii"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.int16), np.eye(4)), src)
    before = read(src)
    ok(imgfs("add", f"orig={src}", "--mount", mnt))
    served = os.path.join(mnt, "orig.nii")
    for flags in (os.O_WRONLY, os.O_RDWR | os.O_TRUNC):
        with pytest.raises(OSError) as e:
            os.open(served, flags)
        assert e.value.errno == errno.EACCES
    with pytest.raises(OSError) as e:
        os.unlink(served)
    assert e.value.errno == errno.EACCES
    assert read(src) == before


def test_read_only_refuses_every_write(tmp_path):
    path = mount(tmp_path / "ro", "--read-only")
    try:
        with pytest.raises(OSError) as e:
            open(os.path.join(path, "x.txt"), "wb")
        assert e.value.errno == errno.EROFS
    finally:
        ok(imgfs("unmount", path))


def test_nifti_tool_copy_im_into_the_mount_equals_a_copy_on_disk(mnt, tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    disk = tmp_path / "disk"
    disk.mkdir()
    for out in (os.path.join(mnt, "copy.nii"), str(disk / "copy.nii")):
        ok(helpers.nifti_tool("-copy_im", "-prefix", out, "-infiles", src))
    assert read(os.path.join(mnt, "copy.nii")) == read(disk / "copy.nii")


@pytest.mark.skipif(shutil.which("mrcalc") is None, reason="MRtrix3 not installed")
def test_an_mrtrix_pipeline_writes_and_reads_its_outputs_in_the_mount(tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = ("mrconvert -quiet {s} $D/t1f.nii -datatype float32 && "
              "mrcalc -quiet $D/t1f.nii 2 -mult $D/x2.nii.gz && "
              "mrstats -output mean $D/x2.nii.gz")
    in_mount = ok(imgfs("run", "--", "sh", "-c",
                        script.format(s=src).replace("$D", "$IMGFS_MOUNT")))
    on_disk = ok(subprocess.run(["sh", "-c", script.format(s=src).replace("$D", str(disk))],
                                capture_output=True, text=True))
    assert in_mount.stdout.strip() == on_disk.stdout.strip() != ""
