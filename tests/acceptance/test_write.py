"""Writing into the mount: tools create, write, rename and remove files in DIR (and its
subdirectories), held in memory by the daemon, read back through the kernel as from tmpfs.
Also runs unprivileged (scripts/test's `unprivileged` step)."""
import errno
import mmap
import os
import shutil
import subprocess
import time

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
    """A mount whose written files may hold 1 MiB, every write seen by the daemon (no
    passthrough), so the limit holds to the byte."""
    path = mount(tmp_path / "s", "--max-memory", "1M", "--no-passthrough")
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


@pytest.mark.skipif(os.geteuid() != 0, reason="FUSE passthrough needs CAP_SYS_ADMIN")
def test_with_passthrough_a_writer_may_pass_max_memory_but_no_new_writer_opens(tmp_path):
    # Passthrough writes reach the memfd without the daemon: it counts them when the writer
    # closes, and refuses the next open for writing while the limit is passed.
    small = mount(tmp_path / "p", "--max-memory", "1M")
    try:
        kept, big = os.path.join(small, "kept.bin"), os.path.join(small, "big.bin")
        kept_bytes, big_bytes = os.urandom(600_000), os.urandom(600_000)
        open(kept, "wb").write(kept_bytes)
        open(big, "wb").write(big_bytes)
        assert os.statvfs(small).f_bfree == 0
        for refused in (os.path.join(small, "new.bin"), kept):
            with pytest.raises(OSError) as e:
                open(refused, "r+b" if os.path.exists(refused) else "wb")
            assert e.value.errno == errno.ENOSPC
        assert read(kept) == kept_bytes and read(big) == big_bytes
        os.unlink(big)
        open(os.path.join(small, "new.bin"), "wb").write(b"z" * 1000)
        assert os.path.getsize(os.path.join(small, "new.bin")) == 1000
    finally:
        ok(imgfs("unmount", small))


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


MRTRIX = pytest.mark.skipif(shutil.which("mrcalc") is None, reason="MRtrix3 not installed")


def same_image(a, b, exact=True):
    # No mapping: a failed assert must not keep a file of the mount open.
    ia, ib = nib.load(a, mmap=False), nib.load(b, mmap=False)
    assert ia.shape == ib.shape
    assert np.allclose(ia.affine, ib.affine)
    da, db = np.asarray(ia.dataobj), np.asarray(ib.dataobj)
    if exact:
        assert np.array_equal(da, db, equal_nan=True), a
    else:
        assert np.corrcoef(da.ravel(), db.ravel())[0, 1] > 0.99, a


@MRTRIX
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


@MRTRIX
def test_tool_outputs_in_the_mount_equal_outputs_on_disk_and_are_images(mnt, tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    disk = tmp_path / "disk"
    disk.mkdir()
    for d in (mnt, str(disk)):
        ok(subprocess.run(["mrconvert", "-quiet", src, f"{d}/t1f.nii", "-datatype", "float32"],
                          capture_output=True, text=True))
        ok(subprocess.run(["mrcalc", "-quiet", f"{d}/t1f.nii", "2", "-mult", f"{d}/x2.nii.gz"],
                          capture_output=True, text=True))
        # The image onto itself: a registration that converges to the same answer each run.
        ok(subprocess.run(["mrregister", "-quiet", f"{d}/x2.nii.gz", f"{d}/x2.nii.gz",
                           "-type", "affine", "-affine", f"{d}/affine.txt",
                           "-transformed", f"{d}/moved.nii"], capture_output=True, text=True))
    for name in ("t1f.nii", "x2.nii.gz"):
        same_image(os.path.join(mnt, name), disk / name)
    # mrregister differs slightly from run to run even between two runs on disk.
    same_image(os.path.join(mnt, "moved.nii"), disk / "moved.nii", exact=False)
    assert np.allclose(np.loadtxt(os.path.join(mnt, "affine.txt")),
                       np.loadtxt(disk / "affine.txt"), atol=0.05)
    images = ls(mnt)
    assert {"t1f", "x2", "moved"} <= set(images), images
    assert all(images[n]["state"] == "written in the mount" for n in ("t1f", "x2", "moved"))
    assert "affine" not in images
    saved = tmp_path / "x2_saved.nii"
    ok(imgfs("save", "x2", str(saved), "--mount", mnt))
    same_image(saved, disk / "x2.nii.gz")


def ls(mnt):
    import json
    return {i["name"]: i for i in json.loads(ok(imgfs("ls", "--json", "--mount", mnt)).stdout)}


def test_a_written_nifti_becomes_an_image_that_set_path_show_save_and_rm_work_on(mnt, tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    disk = tmp_path / "out.nii"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2, 2, 1])), disk)
    written = os.path.join(mnt, "out.nii")
    shutil.copyfile(disk, written)
    entry = ls(mnt)["out"]
    assert entry["state"] == "written in the mount" and entry["origin"] is None, entry
    assert any("no original on disk" in r for r in entry["reasons"]), entry
    assert ok(imgfs("path", "out", "--mount", mnt)).stdout.strip() == written
    assert read(written) == read(disk)
    ok(imgfs("set", "out", "descrip=edited", "--mount", mnt))
    # Edited: the mount shows the new version under the name, the data unchanged.
    edited = nib.load(ok(imgfs("path", "out", "--mount", mnt)).stdout.strip())
    assert edited.header["descrip"].tobytes().rstrip(b"\0") == b"edited"
    assert np.array_equal(np.asarray(edited.dataobj), data)
    saved = tmp_path / "saved.nii.gz"
    ok(imgfs("save", "out", str(saved), "--mount", mnt))
    assert np.array_equal(np.asarray(nib.load(saved).dataobj), data)
    ok(imgfs("rm", "out", "--mount", mnt))
    assert "out" not in ls(mnt)


def test_rewriting_an_output_makes_a_new_version_and_an_open_reader_keeps_the_old(mnt, tmp_path):
    first, second = tmp_path / "1.nii.gz", tmp_path / "2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), first)
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 7, np.float32), np.eye(4)), second)
    out = os.path.join(mnt, "res.nii.gz")
    shutil.copyfile(first, out)
    served = ok(imgfs("show", "res", "--mount", mnt))
    assert "written in the mount" in served.stdout, served.stdout
    with open(os.path.join(mnt, "res.nii"), "rb") as reader:  # the image, rendered
        head = reader.read(352)
        shutil.copyfile(second, out)  # a tool writes its output again
        rest = reader.read()
    assert np.asarray(nib.Nifti1Image.from_bytes(head + rest).dataobj).max() == 1
    assert nib.load(os.path.join(mnt, "res.nii")).get_fdata().max() == 7
    assert nib.load(out).get_fdata().max() == 7
    assert ls(mnt)["res"]["state"] == "written in the mount"


def test_after_set_the_name_shows_the_edited_version_and_is_not_written_through(mnt, tmp_path):
    src = tmp_path / "o.nii"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), src)
    out = os.path.join(mnt, "o.nii")
    shutil.copyfile(src, out)
    ok(imgfs("set", "o", "descrip=edited", "--mount", mnt))
    assert nib.load(out).header["descrip"].tobytes().rstrip(b"\0") == b"edited"
    with pytest.raises(OSError) as e:
        open(out, "r+b")
    assert e.value.errno == errno.EACCES
    ok(imgfs("rm", "o", "--mount", mnt))
    assert read(out) == read(src)  # the written file itself, as written


def test_a_written_pair_and_a_gz_become_images(mnt, tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name in ("pair.hdr", "z.nii.gz"):
        src = tmp_path / name
        nib.save(nib.Nifti1Pair(data, np.eye(4)) if name.endswith(".hdr")
                 else nib.Nifti1Image(data, np.eye(4)), src)
        for f in os.listdir(tmp_path):
            if f.startswith(name.split(".")[0]):
                shutil.copyfile(tmp_path / f, os.path.join(mnt, f))
    images = ls(mnt)
    assert {"pair", "z"} <= set(images), images
    for name in ("pair", "z"):
        rendered = os.path.join(mnt, f"{name}.nii")
        assert np.array_equal(nib.load(rendered).get_fdata(), data)


def test_a_file_that_does_not_parse_stays_plain_and_ls_says_why(mnt):
    bad = os.path.join(mnt, "broken.nii")
    open(bad, "wb").write(b"not a header")
    assert read(bad) == b"not a header"
    assert "broken" not in ls(mnt)
    text = ok(imgfs("ls", "--mount", mnt)).stdout
    assert f"{bad}: not an image, a plain file:" in text, text
    open(os.path.join(mnt, "notes.json"), "w").write("{}")
    assert "notes" not in ls(mnt)


def used(mnt):
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_an_outputs_memory_counts_while_its_image_holds_it_and_is_freed_with_both(small, tmp_path):
    src = tmp_path / "out.nii"
    nib.save(nib.Nifti1Image(np.ones((100, 100, 10), np.float32), np.eye(4)), src)
    size = os.path.getsize(src)
    out = os.path.join(small, "out.nii")
    shutil.copyfile(src, out)
    assert "out" in ls(small)
    assert used(small) // 4096 == -(-size // 4096)
    # The tool changes its output: the change goes to a copy, the image keeps the first
    # version, and both are memory.
    with open(out, "r+b") as f:
        f.write(b"\0")
    assert used(small) >= 2 * size
    with pytest.raises(OSError) as e:
        open(os.path.join(small, "more.bin"), "wb").write(b"m" * 300_000)
    assert e.value.errno == errno.ENOSPC
    os.unlink(os.path.join(small, "more.bin"))
    ok(imgfs("rm", "out", "--mount", small))
    os.unlink(out)
    for _ in range(100):  # the kernel forgets the unlinked file's inode on its own time
        if used(small) == 0:
            break
        time.sleep(0.05)
    assert used(small) == 0
    open(os.path.join(small, "big.bin"), "wb").write(b"b" * 1_000_000)


def test_a_pair_whose_name_holds_img_is_loaded_from_its_header(mnt, tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Pair(data, np.eye(4)), tmp_path / "run.imgs.hdr")
    for f in ("run.imgs.hdr", "run.imgs.img"):  # the .img closes last
        shutil.copyfile(tmp_path / f, os.path.join(mnt, f))
    path = ok(imgfs("path", "run.imgs", "--mount", mnt)).stdout.strip()
    assert path == os.path.join(mnt, "run.imgs.hdr")
    assert np.array_equal(nib.load(os.path.join(mnt, "run.imgs.nii")).get_fdata(), data)


def test_ls_shows_each_images_memory(mnt, tmp_path):
    src = tmp_path / "orig.nii"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), src)
    ok(imgfs("add", f"orig={src}", "--mount", mnt))
    ok(imgfs("set", "orig", "descrip=edited", "--mount", mnt))
    shutil.copyfile(src, os.path.join(mnt, "out.nii"))
    images = ls(mnt)
    assert images["orig"]["memory_bytes"] == 0, images["orig"]  # read from its file on disk
    assert images["out"]["memory_bytes"] == os.path.getsize(src), images["out"]
    text = ok(imgfs("ls", "--mount", mnt)).stdout
    assert "MEMORY" in text.splitlines()[0], text
    out_line = next(line for line in text.splitlines() if line.startswith("out "))
    assert f" {os.path.getsize(src)} " in out_line, text


def test_a_written_nii_gz_is_read_back_through_the_gzip_index_not_inflated_whole(mnt, tmp_path):
    """The image a tool wrote as .nii.gz is read by range through the gzip index (issue 7), so
    reading it whole holds about the index's cache, never the 128 MiB decompressed."""
    import gzip
    import hashlib

    shape = (128, 128, 64, 32)  # float32: 128 MiB decompressed
    block = np.linspace(-1000, 1000, 128 * 128 * 64, dtype=np.float32).reshape(shape[:3])
    data = np.empty(shape, dtype=np.float32, order="F")
    for t in range(shape[3]):
        data[..., t] = block + t
    src = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    del data, block
    shutil.copyfile(src, os.path.join(mnt, "big.nii.gz"))
    entry = ls(mnt)["big"]
    assert entry["state"] == "written in the mount" and "gz" in entry["format"], entry
    pid = helpers.daemon_pid(mnt)
    before = _rss_anon_mib(pid)
    h, n = hashlib.sha256(), 0
    with open(os.path.join(mnt, "big.nii"), "rb") as f:  # the image, rendered from the gzip
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    grew = _rss_anon_mib(pid) - before
    with gzip.open(src, "rb") as f:
        want = f.read()
    assert n == len(want) and h.hexdigest() == hashlib.sha256(want).hexdigest()
    assert grew < 64, f"daemon private memory grew by {grew:.0f} MiB reading a 128 MiB image"


def _rss_anon_mib(pid):
    """The daemon's private memory: what inflating the image whole would grow (the written
    file's memfd is shared memory, not counted)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no RssAnon for {pid}")


def test_rm_of_an_output_removes_its_image_and_frees_its_memory(small, tmp_path):
    src = tmp_path / "o.nii"
    nib.save(nib.Nifti1Image(np.ones((50, 50, 10), np.float32), np.eye(4)), src)
    out = os.path.join(small, "o.nii")
    shutil.copyfile(src, out)
    assert "o" in ls(small)
    os.unlink(out)
    assert "o" not in ls(small), "the image was its file: it goes with it"
    assert not os.path.exists(out), "nothing shows under the name any more"
    for _ in range(100):  # the kernel forgets the unlinked file's inode on its own time
        if used(small) == 0:
            break
        time.sleep(0.05)
    assert used(small) == 0


def test_mv_of_an_output_moves_its_image_and_a_renamed_temporary_file_becomes_one(mnt, tmp_path):
    src = tmp_path / "t.nii.gz"
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    tmp = os.path.join(mnt, ".res.nii.gz.part")  # a tool writing to a temporary name first
    shutil.copyfile(src, tmp)
    assert "res" not in ls(mnt)
    os.rename(tmp, os.path.join(mnt, "res.nii.gz"))
    assert ls(mnt)["res"]["state"] == "written in the mount"
    assert np.array_equal(nib.load(os.path.join(mnt, "res.nii")).get_fdata(), data)
    os.rename(os.path.join(mnt, "res.nii.gz"), os.path.join(mnt, "moved.nii.gz"))
    images = ls(mnt)
    assert "res" not in images and "moved" in images, images
    assert not os.path.exists(os.path.join(mnt, "res.nii"))
    assert ok(imgfs("path", "moved", "--mount", mnt)).stdout.strip() == os.path.join(
        mnt, "moved.nii.gz")


def test_rm_of_the_name_an_edited_or_rendered_output_shows_removes_that_image(mnt, tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Pair(data, np.eye(4)), tmp_path / "p.hdr")
    for f in ("p.hdr", "p.img"):
        shutil.copyfile(tmp_path / f, os.path.join(mnt, f))
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "e.nii")
    shutil.copyfile(tmp_path / "e.nii", os.path.join(mnt, "e.nii"))
    ok(imgfs("set", "e", "descrip=edited", "--mount", mnt))
    assert {"p", "e"} <= set(ls(mnt))
    os.unlink(os.path.join(mnt, "p.nii"))  # the pair, served as one file
    os.unlink(os.path.join(mnt, "e.nii"))  # the edited version hiding the written file
    assert not {"p", "e"} & set(ls(mnt))
    assert sorted(f for f in os.listdir(mnt) if f[0] in "pe") == ["p.hdr", "p.img"]
    # An image added from disk is never removed through its file.
    ok(imgfs("add", f"d={tmp_path / 'e.nii'}", "--mount", mnt))
    with pytest.raises(OSError) as e:
        os.unlink(os.path.join(mnt, "d.nii"))
    assert e.value.errno == errno.EACCES
    assert (tmp_path / "e.nii").exists()


def test_forwarded_writes_are_stored_whole_when_read_back_past_the_page_cache(tmp_path):
    """Without passthrough a write is answered before its bytes are copied into memory, so
    that the writer's next write and the copy overlap: every byte must still be there for a
    read that reaches the daemon (the kernel's cached pages dropped) right after the writes."""
    path = mount(tmp_path / "f", "--no-passthrough")
    try:
        block = 1 << 20
        want = os.urandom(48 * block)
        out = os.path.join(path, "blocks.bin")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for at in range(0, len(want), block):
                os.write(fd, want[at:at + block])
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert helpers.read_past_the_cache(out) == want
    finally:
        ok(imgfs("unmount", path))


@MRTRIX
def test_outputs_written_into_an_output_directory_become_images_served_in_the_root(mnt, tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    outdir = os.path.join(mnt, "derivatives", "anat")
    os.makedirs(outdir)
    ok(helpers.nifti_tool("-copy_im", "-prefix", os.path.join(outdir, "copy.nii"),
                          "-infiles", src))
    done = subprocess.run(["mrconvert", "-quiet", src, os.path.join(outdir, "f32.nii.gz"),
                           "-datatype", "float32"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    images = ls(mnt)
    assert {"copy", "f32"} <= set(images), images
    for name, file in (("copy", "copy.nii"), ("f32", "f32.nii.gz")):
        assert images[name]["state"] == "written in the mount", images[name]
        written = os.path.join(outdir, file)
        assert ok(imgfs("path", name, "--mount", mnt)).stdout.strip() == written
        same_image(os.path.join(mnt, f"{name}.nii"), written)  # also served in the root
    saved = tmp_path / "saved.nii"
    ok(imgfs("save", "f32", str(saved), "--mount", mnt))
    same_image(saved, src, exact=False)
    # The directory moves with its images; removing a file removes its image.
    os.rename(os.path.join(mnt, "derivatives"), os.path.join(mnt, "out"))
    assert ok(imgfs("path", "copy", "--mount", mnt)).stdout.strip() == os.path.join(
        mnt, "out", "anat", "copy.nii")
    os.unlink(os.path.join(mnt, "out", "anat", "copy.nii"))
    assert "copy" not in ls(mnt) and not os.path.exists(os.path.join(mnt, "copy.nii"))
