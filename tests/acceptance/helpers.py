"""Shared helpers for the imgfs acceptance tests (nibabel side of the comparisons)."""
import gzip
import json
import os
import re
import subprocess

import nibabel as nib
import numpy as np
from nibabel.openers import Opener

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")

CORPUS = [
    "analyze.hdr", "anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz",
    "functional.nii", "nifti1.hdr", "nifti2.hdr", "reoriented_anat_moved.nii",
    "resampled_anat_moved.nii", "row_major.dconn.nii", "standard.nii.gz",
]
# nibabel ships these headers without their .img
CORPUS_NO_DATA = {"analyze.hdr", "nifti1.hdr", "nifti2.hdr"}

DTYPE_NAMES = {128: "RGB", 2304: "RGBA"}


def imgfs_bin():
    return os.environ.get("IMGFS_BIN") or os.path.join(REPO, "target", "debug", "imgfs")


def run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def imgfs(*args, timeout=120):
    return run([imgfs_bin(), *map(str, args)], timeout=timeout)


def describe(proc):
    return f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"


def info_json(path):
    proc = imgfs("info", path, "--json")
    assert proc.returncode == 0, f"imgfs info --json {path} failed: {describe(proc)}"
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:  # pragma: no cover - reported as failure
        raise AssertionError(f"imgfs info --json printed no JSON object ({e}): {proc.stdout[:500]!r}")


def header_path(path):
    """The file holding the header: foo.img -> foo.hdr (foo.img.gz -> foo.hdr.gz)."""
    if path.endswith(".img"):
        return path[:-4] + ".hdr"
    if path.endswith(".img.gz"):
        return path[:-7] + ".hdr.gz"
    return path


def image_path(path):
    """The file holding the data of a pair: foo.hdr -> foo.img."""
    if path.endswith(".hdr"):
        return path[:-4] + ".img"
    if path.endswith(".hdr.gz"):
        return path[:-7] + ".img.gz"
    return path


def is_cifti(img):
    return type(img).__name__ == "Cifti2Image"


def load(path):
    """nib.load, but a CIFTI-2 file is read as the plain NIfTI-2 image it is on disk."""
    img = nib.load(path)
    if is_cifti(img):
        img = nib.Nifti2Image.from_filename(path)
    return img


def raw_header(path, check=True):
    """The header as stored in the file (nib.load moves scl_* out of img.header).

    check=True applies nibabel's load-time fixes (as nib.load does, e.g. pixdim[0] 0 -> 1);
    check=False gives the bytes as they are.
    """
    img = nib.load(path)
    klass = nib.Nifti2Header if is_cifti(img) else img.header_class
    with Opener(header_path(path)) as f:
        return klass.from_fileobj(f, check=check)


def dtype_name(hdr):
    code = int(hdr["datatype"])
    if code in DTYPE_NAMES:
        return DTYPE_NAMES[code]
    return hdr.get_data_dtype().name


def data_of(img):
    """What a user reads: get_fdata for real data; the stored values for complex / RGB."""
    dt = img.get_data_dtype()
    if dt.kind in "cV":
        return np.asanyarray(img.dataobj)
    return img.get_fdata()


def flavour(hdr):
    if isinstance(hdr, nib.Nifti2Header):
        return "nifti2"
    if isinstance(hdr, nib.Nifti1Header):
        return "nifti1"
    return "analyze"


def raw_header_bytes(path):
    hp = header_path(path)
    opener = gzip.open if hp.endswith(".gz") else open
    with opener(hp, "rb") as f:
        blob = f.read(540)
    n = 540 if blob[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else 348
    return blob[:n]


def arrays_equal(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "V" or b.dtype.kind == "V":
        return a.dtype == b.dtype and bool(np.all(a == b))
    return bool(np.array_equal(a, b, equal_nan=True))


def nifti_tool(*args):
    return run(["nifti_tool", *map(str, args)])


def mrinfo(*args):
    return run(["mrinfo", *map(str, args)])


def disp_nim_dims(path):
    """dim[] of a NIfTI file as nifti_tool's -disp_nim shows it."""
    proc = nifti_tool("-disp_nim", "-field", "dim", "-infiles", path)
    m = re.search(r"^\s*dim\s+\d+\s+8\s+([-\d ]+)$", proc.stdout, re.M)
    assert m, f"nifti_tool -disp_nim shows no dim for {path}: {proc.stdout}{proc.stderr}"
    return [int(x) for x in m.group(1).split()]


def hbytes(hdr, key):
    """A string header field as bytes, without the NUL padding."""
    return bytes(np.asarray(hdr[key]).item())


def text_forms(raw):
    """Acceptable renderings of a char[] header field: nibabel's (all bytes, trailing NULs
    stripped) or C's (up to the first NUL, as nifti_tool shows it)."""
    raw = bytes(raw).rstrip(b"\0")
    return {raw.decode("latin-1"), raw.split(b"\0")[0].decode("latin-1")}


def read_past_the_cache(path, block=1 << 20):
    """The whole file as the daemon has it: the kernel's cached pages of it are dropped
    first, so every read goes to the mount."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return b"".join(iter(lambda: os.read(fd, block), b""))
    finally:
        os.close(fd)


def daemon_pid(mount_dir):
    """The pid of the daemon serving `mount_dir`, asked through the Python client's `ping`."""
    import sys
    sys.path.insert(0, os.path.join(REPO, "python"))
    from imgfs.mount import Mount

    m = Mount(mount_dir)
    try:
        return m.ping()["pid"]
    finally:
        m.close()
