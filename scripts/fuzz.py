"""Seeded mutation fuzzing of imgfs: headers, extensions and gzip streams.

Each mutant is a small valid image (nibabel's corpus plus a few written here) with one
mutation: a header field set to an extreme, bytes flipped in the header and extensions, an
extension's size or code broken, the file cut at a multiple of 16 bytes, or (for gzip
originals) the compressed stream damaged. Every mutant goes through `imgfs info`, through
`imgfs add` into a live mount, and through one whole read of the served file. The oracle:

- a refusal must be a clear error: exit 1, `imgfs: ` first, the file named, no panic,
  no internal error, no Rust Debug output;
- a served file must load in nibabel, and when nibabel also reads the mutant itself the data
  must be equal; a mutant nibabel refuses but imgfs serves is recorded as a note;
- a read that fails with EIO is accepted only when `imgfs ls` says why for that image;
- nothing may exceed its timeout (a hang), and the daemon must answer `ping` after every
  batch with its RSS under --rss-mib.

Mutant N of seed S is the same file on every run: `--seed S --only N` replays it, and each
failing mutant is kept in the output directory that the summary names.
"""
import argparse
import collections
import gzip
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib

import logging

import nibabel as nib
import numpy as np

logging.getLogger("nibabel").setLevel(logging.CRITICAL)  # mutants make it chatty

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "python"))
from imgfs.mount import Mount  # noqa: E402

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
CORPUS = ["functional.nii", "reoriented_anat_moved.nii", "standard.nii.gz",
          "example_nifti2.nii.gz"]

# (name, NIfTI-1 offset, struct code, count); Analyze shares the NIfTI-1 layout up to 348.
N1_FIELDS = [
    ("sizeof_hdr", 0, "i", 1), ("dim_info", 39, "B", 1), ("dim", 40, "h", 8),
    ("intent_p1", 56, "f", 1), ("intent_code", 68, "h", 1), ("datatype", 70, "h", 1),
    ("bitpix", 72, "h", 1), ("slice_start", 74, "h", 1), ("pixdim", 76, "f", 8),
    ("vox_offset", 108, "f", 1), ("scl_slope", 112, "f", 1), ("scl_inter", 116, "f", 1),
    ("slice_end", 120, "h", 1), ("slice_code", 122, "B", 1), ("xyzt_units", 123, "B", 1),
    ("cal_max", 124, "f", 1), ("slice_duration", 132, "f", 1), ("qform_code", 252, "h", 1),
    ("sform_code", 254, "h", 1), ("quatern_b", 256, "f", 3), ("qoffset_x", 268, "f", 3),
    ("srow_x", 280, "f", 4), ("srow_y", 296, "f", 4), ("srow_z", 312, "f", 4),
    ("magic", 344, "4s", 1),
]
N2_FIELDS = [
    ("sizeof_hdr", 0, "i", 1), ("magic", 4, "8s", 1), ("datatype", 12, "h", 1),
    ("bitpix", 14, "h", 1), ("dim", 16, "q", 8), ("intent_p1", 80, "d", 1),
    ("pixdim", 104, "d", 8), ("vox_offset", 168, "q", 1), ("scl_slope", 176, "d", 1),
    ("scl_inter", 184, "d", 1), ("slice_start", 224, "q", 1), ("slice_end", 232, "q", 1),
    ("qform_code", 344, "i", 1), ("sform_code", 348, "i", 1), ("quatern_b", 352, "d", 3),
    ("srow_x", 400, "d", 4), ("slice_code", 496, "i", 1), ("xyzt_units", 500, "i", 1),
    ("intent_code", 504, "i", 1), ("dim_info", 524, "B", 1),
]
DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048,
             2304, 7, 3, 255, 32767, -1, -32768]
INT_LIMITS = {"B": (0, 255), "h": (-2**15, 2**15 - 1), "i": (-2**31, 2**31 - 1),
              "q": (-2**63, 2**63 - 1)}
FLOAT_EXTREMES = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 3.4e38,
                  1e-45, -1.0, 1.0, 351.0, 352.0, 353.0, 2.0**31, 2.0**63, 1e300]


# ---------------------------------------------------------------- seeds

def _nifti(klass, shape, dtype, seed, **hdr):
    rng = np.random.default_rng(seed)
    data = (rng.normal(50, 20, size=shape)).astype(dtype)
    img = klass(data, np.diag([2.0, 2.5, 3.0, 1.0]))
    for k, v in hdr.items():
        img.header[k] = v
    return img


def make_seeds(d):
    """Small valid originals: nibabel's corpus and a few that it lacks. Returns paths."""
    seeds = []
    for name in CORPUS:
        dst = os.path.join(d, name)
        shutil.copyfile(os.path.join(NIB_DATA, name), dst)
        seeds.append(dst)
    ext = _nifti(nib.Nifti1Image, (6, 5, 4), np.int16, 1, descrip=b"with extensions")
    ext.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment for imgfs"))
    ext.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"\x01\x02" * 40))
    for suffix in (".nii", ".nii.gz"):
        p = os.path.join(d, "ext" + suffix)
        nib.save(ext, p)
        seeds.append(p)
    be = _nifti(nib.Nifti1Image, (7, 6, 5, 2), np.float32, 2)
    be.header.set_slope_inter(2.0, -3.0)
    p = os.path.join(d, "bigend.nii")
    nib.save(nib.Nifti1Image(be.dataobj, be.affine, be.header.as_byteswapped(">")), p)
    seeds.append(p)
    n2 = _nifti(nib.Nifti2Image, (5, 6, 7), np.float64, 3)
    p = os.path.join(d, "n2.nii")
    nib.save(n2, p)
    seeds.append(p)
    pair = _nifti(nib.Nifti1Pair, (8, 7, 3), np.uint8, 4)
    p = os.path.join(d, "pair.hdr")
    nib.save(pair, p)
    seeds.append(p)
    ana = _nifti(nib.AnalyzeImage, (5, 5, 5), np.int16, 5)
    p = os.path.join(d, "analyze.hdr")
    nib.save(ana, p)
    seeds.append(p)
    return seeds


# ---------------------------------------------------------------- mutations

def _order(hdr):
    return "<" if struct.unpack("<i", hdr[:4])[0] in (348, 540) else ">"


def _vox_offset(plain):
    order = _order(plain)
    if struct.unpack(order + "i", plain[:4])[0] == 540:
        return struct.unpack_from(order + "q", plain, 168)[0]
    return int(struct.unpack_from(order + "f", plain, 108)[0])


def _field_extreme(rng, plain):
    order = _order(plain)
    n2 = struct.unpack(order + "i", plain[:4])[0] == 540
    name, off, code, count = rng.choice(N2_FIELDS if n2 else N1_FIELDS)
    i = rng.randrange(count)
    off += i * struct.calcsize(code)
    if code.endswith("s"):
        n = int(code[:-1])
        value = bytes(rng.randrange(256) for _ in range(n)) if rng.random() < 0.5 else b"\0" * n
        desc = f"{name} = {value!r}"
    elif code in "fd":
        value = rng.choice(FLOAT_EXTREMES)
        if code == "f" and np.isfinite(value) and abs(value) > 3.4e38:
            value = float(np.finfo(np.float32).max) * np.sign(value)
        desc = f"{name}[{i}] = {value!r}"
    else:
        lo, hi = INT_LIMITS[code]
        choices = [lo, hi, lo + 1, hi - 1, 0, -1 if lo < 0 else 1, 1, 2, 7, 8, 9]
        if name == "datatype":
            choices += DATATYPES
        value = max(lo, min(hi, rng.choice(choices)))
        desc = f"{name}[{i}] = {value}"
    out = bytearray(plain)
    if off + struct.calcsize(code) > len(out):
        return bytes(out), f"{name} beyond the file (unchanged)"
    struct.pack_into(order + code, out, off, value)
    return bytes(out), desc


def _flip(rng, plain):
    end = min(len(plain), max(_vox_offset_guess(plain), 348) + 16)
    out = bytearray(plain)
    picks = []
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(end)
        bit = 1 << rng.randrange(8)
        out[pos] ^= bit
        picks.append(f"{pos}^{bit:#x}")
    return bytes(out), "flip " + ",".join(picks)


def _vox_offset_guess(plain):
    try:
        v = _vox_offset(plain)
    except (struct.error, ValueError, OverflowError):
        return 352
    return v if 0 < v < len(plain) else 352


def _extension(rng, plain):
    """Break an extension's esize or ecode, or the extension flag."""
    order = _order(plain)
    n2 = struct.unpack(order + "i", plain[:4])[0] == 540
    flag = 540 if n2 else 348
    out = bytearray(plain)
    if len(out) < flag + 4:
        return bytes(out), "no extension flag (unchanged)"
    if out[flag] == 0 or rng.random() < 0.15:
        out[flag] ^= 1
        return bytes(out), f"extension flag byte = {out[flag]}"
    # walk to the k-th extension
    pos, exts = flag + 4, []
    limit = _vox_offset_guess(plain)
    while pos + 8 <= limit:
        esize = struct.unpack_from(order + "i", out, pos)[0]
        exts.append(pos)
        if esize < 16:
            break
        pos += esize
    if not exts:
        return bytes(out), "no extension (unchanged)"
    at = rng.choice(exts)
    if rng.random() < 0.7:
        value = rng.choice([0, 8, 15, 16, 17, -16, 2**31 - 1, -2**31, len(plain), len(plain) + 16,
                            limit - at, limit - at + 16])
        struct.pack_into(order + "i", out, at, value)
        return bytes(out), f"esize at {at} = {value}"
    value = rng.choice([-1, 0, 2**31 - 1, 99, 4])
    struct.pack_into(order + "i", out, at + 4, value)
    return bytes(out), f"ecode at {at + 4} = {value}"


def _truncate(rng, data):
    cut = 16 * rng.randrange(max(1, len(data) // 16))
    return data[:cut], f"truncated at {cut} of {len(data)}"


def _gzip_damage(rng, comp):
    kind = rng.choice(["flip", "truncate", "isize", "crc", "flags", "garbage", "member"])
    out = bytearray(comp)
    if kind == "flip":
        pos = rng.randrange(len(out))
        out[pos] ^= 1 << rng.randrange(8)
        return bytes(out), f"gzip byte {pos} flipped"
    if kind == "truncate":
        cut, desc = _truncate(rng, comp)
        return cut, "gzip stream " + desc
    if kind == "isize":
        value = rng.choice([0, 1, 2**32 - 1, 2**31, len(comp)])
        struct.pack_into("<I", out, len(out) - 4, value)
        return bytes(out), f"gzip ISIZE = {value}"
    if kind == "crc":
        struct.pack_into("<I", out, len(out) - 8, rng.randrange(2**32))
        return bytes(out), "gzip CRC32 replaced"
    if kind == "flags":
        out[3] = rng.randrange(256)
        return bytes(out), f"gzip FLG = {out[3]:#x}"
    if kind == "garbage":
        n = rng.choice([1, 7, 16, 1000])
        return bytes(out) + bytes(rng.randrange(256) for _ in range(n)), f"{n} garbage bytes appended"
    extra = gzip.compress(bytes(rng.randrange(256) for _ in range(rng.choice([1, 16, 4096]))),
                          mtime=0)
    return bytes(out) + extra, "a second gzip member appended"


def mutate(seeds, seed, ident, outdir):
    """Write mutant `ident` of `seed` into outdir; returns (path to hand imgfs, description)."""
    rng = random.Random(f"imgfs-fuzz:{seed}:{ident}")
    src = rng.choice(seeds)
    name = os.path.basename(src)
    gz = name.endswith(".gz")
    pair = name.endswith(".hdr")
    opener = gzip.open if gz else open
    with opener(src, "rb") as f:
        plain = f.read()
    ops = ["field"] * 5 + ["flip"] * 3 + ["extension"] * 2 + ["truncate"] * 2
    if gz:
        ops += ["gzip"] * 4
    if pair:
        ops += ["img"]
    op = rng.choice(ops)
    img_bytes = None
    if pair:
        with open(src[:-4] + ".img", "rb") as f:
            img_bytes = f.read()
    if op == "field":
        plain, desc = _field_extreme(rng, plain)
    elif op == "flip":
        plain, desc = _flip(rng, plain)
    elif op == "extension":
        plain, desc = _extension(rng, plain)
    elif op == "truncate" and not gz:
        plain, desc = _truncate(rng, plain)
    elif op == "img":
        img_bytes, desc = _truncate(rng, img_bytes)
        desc = ".img " + desc
    else:
        desc = ""
    data = gzip.compress(plain, mtime=0) if gz else plain
    if op == "truncate" and gz:
        data, desc = _truncate(rng, data)
        desc = "gzip stream " + desc
    elif op == "gzip":
        data, desc = _gzip_damage(rng, data)
    mdir = os.path.join(outdir, f"m{ident}")
    os.mkdir(mdir, 0o700)
    path = os.path.join(mdir, name)
    with open(path, "xb") as f:
        f.write(data)
    if pair:
        with open(path[:-4] + ".img", "xb") as f:
            f.write(img_bytes)
    return path, f"{name}: {desc}"


# ---------------------------------------------------------------- oracle

DEBUG_OUTPUT = re.compile(r"\b(Some|None|Ok|Err)\(|\w+ \{ \w+: |\bOs \{|kind: \w+")
ORDINARY_REASON = re.compile(
    r"^(header field \w+ changed|marked dirty|affine changed|extension \d+ changed"
    r"|extensions added or removed|data written|not loaded from a file)$")


class Failure(Exception):
    pass


def clear_error(proc, path, what):
    err = proc.stderr
    files = {path, path[:-4] + ".img"} if path.endswith(".hdr") else {path}
    if proc.returncode == 101 or "panicked" in err:
        raise Failure(f"{what} panicked: {err.strip()[-500:]}")
    if proc.returncode != 1:
        raise Failure(f"{what} exited {proc.returncode}: {err.strip()[-500:]}")
    problems = []
    if not err.startswith("imgfs: ") or len(err.strip()) <= len("imgfs: "):
        problems.append("does not start with 'imgfs: ' and a message")
    if not any(f in err for f in files):
        problems.append("does not name the file")
    if "internal error" in err.lower():
        problems.append("says internal error")
    if DEBUG_OUTPUT.search(err):
        problems.append("shows Rust Debug output")
    if problems:
        raise Failure(f"{what} error {'; '.join(problems)}: {err.strip()[-500:]!r}")


def run_cli(binary, args, timeout, what):
    try:
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"{what} hung (no answer in {timeout} s)")


def read_whole(path, timeout):
    """Read a file through the mount in a thread, so a hung read is reported, not inherited."""
    box = {}

    def work():
        try:
            with open(path, "rb") as f:
                box["data"] = f.read()
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise Failure(f"reading {path} hung (no answer in {timeout} s)")
    if "error" in box:
        raise box["error"]
    return box["data"]


def nib_data(img):
    dt = img.get_data_dtype()
    if int(np.prod(img.shape, dtype=np.float64)) * max(dt.itemsize, 8) > 256 << 20:
        raise ValueError("too large for the oracle")
    return np.asanyarray(img.dataobj) if dt.kind in "cV" else img.get_fdata()


def nib_read_mutant(path):
    """What nibabel reads from the mutant itself, or None when it refuses it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = nib.load(path)
            if type(img).__name__ == "Cifti2Image":
                img = nib.Nifti2Image.from_filename(path)
            return img.shape, nib_data(img)
    except Exception:  # nibabel refuses in many ways; any refusal counts as one
        return None


def nib_read_served(blob):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        klass = nib.Nifti2Image if blob[:4] in (b"\x1c\x02\0\0", b"\0\0\x02\x1c") else nib.Nifti1Image
        img = klass.from_bytes(blob)
        return img.shape, nib_data(img)


def equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
        return False
    if a.dtype.kind == "V":
        return a.dtype == b.dtype and bool(np.all(a == b))
    return bool(np.array_equal(a, b, equal_nan=True))


def check_mutant(ctx, ident, path):
    """Run one mutant through info, add, a whole read and nibabel. Returns a note or None."""
    t = ctx.timeout
    info = run_cli(ctx.binary, ["info", path, "--json"], t, "info")
    if info.returncode == 0:
        try:
            json.loads(info.stdout)
        except json.JSONDecodeError:
            raise Failure(f"info --json exited 0 without JSON: {info.stdout[:200]!r}")
    else:
        clear_error(info, path, "info")
    ctx.counts["info ok" if info.returncode == 0 else "info refused"] += 1
    name = f"fz{ident}"
    add = run_cli(ctx.binary, ["add", f"{name}={path}", "--mount", ctx.mount_dir], t, "add")
    if add.returncode != 0:
        clear_error(add, path, "add")
        ctx.counts["add refused"] += 1
        return None
    ctx.counts["add ok"] += 1
    if info.returncode != 0:
        ctx.counts["add ok after info refused"] += 1
    try:
        served_path = os.path.join(ctx.mount_dir, f"{name}.nii")
        size = os.stat(served_path).st_size
        plain_size = os.path.getsize(path)
        if path.endswith(".gz"):
            try:
                with gzip.open(path) as f:
                    plain_size = len(f.read(64 << 20))
            except (OSError, EOFError, zlib.error):
                pass
        if size > 64 * max(plain_size, 1 << 16):
            raise Failure(f"served size {size} for a {plain_size}-byte original")
        try:
            blob = read_whole(served_path, t)
        except OSError as e:
            entry = next((i for i in ctx.mount.ls() if i["name"] == name), None)
            reasons = entry.get("reasons", []) if entry else []
            said = entry and (entry.get("served_as") == "unavailable"
                              or any(not ORDINARY_REASON.match(r) for r in reasons))
            if not said:
                raise Failure(f"read failed ({e}) but ls gives no reason: {entry}")
            ctx.counts["read refused"] += 1
            return None
        if len(blob) != size:
            raise Failure(f"read {len(blob)} bytes of a file whose st_size is {size}")
        want = nib_read_mutant(path)
        ctx.counts["served"] += 1
        try:
            got_shape, got = nib_read_served(blob)
        except Exception as e:
            with open(path, "rb") as f:
                if want is None and f.read() == blob:
                    # passthrough of a clean original: the file itself, refused alike
                    return f"served unchanged; nibabel refuses it ({e})"
            raise Failure(f"served, but nibabel cannot read what is served: {e}")
        if want is None:
            return f"nibabel refuses the mutant; imgfs serves shape {got_shape}"
        if want[0] != got_shape or not equal(want[1], got):
            raise Failure(f"served data differ from nibabel's reading of the mutant "
                          f"(shape {got_shape} vs {want[0]})")
        return None
    finally:
        try:
            ctx.mount.rm(name)
        except Exception as e:  # reported through the liveness check
            ctx.rm_errors.append(f"rm {name}: {e}")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Context:
    pass


def run(seed, count=None, budget=None, only=None, binary=None, outdir=None, timeout=30.0,
        rss_limit_mib=200.0, batch=50, log=print):
    """Fuzz; returns a dict summary. Failing mutants stay in summary['outdir']."""
    binary = binary or os.environ.get("IMGFS_BIN") or os.path.join(REPO, "target/debug/imgfs")
    work = tempfile.mkdtemp(prefix="imgfs-fuzz-")  # 0700, ours
    outdir = outdir or os.path.join(work, "failures")
    os.makedirs(outdir, mode=0o700, exist_ok=True)
    seeds_dir = os.path.join(work, "seeds")
    mutants_dir = os.path.join(work, "mutants")
    os.mkdir(seeds_dir, 0o700)
    os.mkdir(mutants_dir, 0o700)
    seeds = make_seeds(seeds_dir)
    ctx = Context()
    ctx.binary, ctx.timeout, ctx.rm_errors = binary, timeout, []
    ctx.counts = collections.Counter()
    ctx.mount_dir = os.path.join(work, "mnt")
    os.mkdir(ctx.mount_dir, 0o700)
    up = subprocess.run([binary, "mount", ctx.mount_dir], capture_output=True, text=True,
                        timeout=60)
    if up.returncode != 0:
        raise RuntimeError(f"imgfs mount failed: {up.stderr}")
    ctx.mount = Mount(ctx.mount_dir)
    pid = ctx.mount.ping()["pid"]
    summary = {"seed": seed, "mutants": 0, "failures": [], "notes": [], "outdir": outdir,
               "rss_start_mib": rss_mib(pid), "rss_max_mib": 0.0}
    log(f"fuzz: seed {seed}, daemon pid {pid}, RSS {summary['rss_start_mib']:.1f} MiB, "
        f"mutants in {mutants_dir}")
    start = time.monotonic()
    ids = [only] if only is not None else None
    ident = -1
    try:
        while True:
            if ids is not None:
                if not ids:
                    break
                ident = ids.pop()
            else:
                ident += 1
                if count is not None and ident >= count:
                    break
                if budget is not None and time.monotonic() - start > budget:
                    break
            path, desc = mutate(seeds, seed, ident, mutants_dir)
            summary["mutants"] += 1
            try:
                note = check_mutant(ctx, ident, path)
                if note:
                    summary["notes"].append(f"mutant {ident} ({desc}): {note}")
                shutil.rmtree(os.path.dirname(path))
            except Failure as e:
                keep = os.path.join(outdir, f"seed{seed}-m{ident}")
                shutil.move(os.path.dirname(path), keep)
                line = f"FAIL seed {seed} mutant {ident} ({desc}): {e} [kept in {keep}]"
                summary["failures"].append(line)
                log(line)
                if "hung" in str(e):
                    break
                try:
                    ctx.mount.ping()
                except Exception as dead:  # the rest would all fail the same way
                    summary["failures"].append(f"FAIL seed {seed} mutant {ident}: the daemon "
                                               f"died (ping: {dead}); see its log")
                    log(summary["failures"][-1])
                    break
            if summary["mutants"] % batch == 0 or ids is not None:
                try:
                    alive = ctx.mount.ping()
                except Exception as e:
                    summary["failures"].append(f"FAIL seed {seed} after mutant {ident}: "
                                               f"daemon does not answer ping: {e}")
                    break
                rss = rss_mib(alive["pid"])
                summary["rss_max_mib"] = max(summary["rss_max_mib"], rss)
                if rss > rss_limit_mib:
                    summary["failures"].append(f"FAIL seed {seed} after mutant {ident}: daemon "
                                               f"RSS {rss:.1f} MiB > {rss_limit_mib} MiB")
                    break
                if summary["mutants"] % (batch * 10) == 0:
                    log(f"fuzz: {summary['mutants']} mutants, {len(summary['failures'])} "
                        f"failures, RSS {rss:.1f} MiB, {time.monotonic() - start:.0f} s")
    finally:
        summary["seconds"] = time.monotonic() - start
        summary["counts"] = dict(ctx.counts)
        if ctx.rm_errors:
            summary["failures"].append(f"FAIL seed {seed}: {len(ctx.rm_errors)} rm requests "
                                       f"failed, first: {ctx.rm_errors[0]}")
        ctx.mount.close()
        subprocess.run([binary, "unmount", ctx.mount_dir], capture_output=True, timeout=60)
        if not summary["failures"]:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(mutants_dir, ignore_errors=True)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    p.add_argument("--count", type=int, default=None, help="number of mutants (default 1000)")
    p.add_argument("--budget", type=float, default=None, help="run for SECONDS instead")
    p.add_argument("--only", type=int, default=None, help="replay one mutant id")
    p.add_argument("--out", default=None, help="directory for failing mutants")
    p.add_argument("--timeout", type=float, default=30.0, help="per info/add/read (s)")
    p.add_argument("--rss-mib", type=float, default=200.0, help="daemon RSS bound")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(2**32)
    count = a.count if a.count is not None or a.budget is not None else 1000
    s = run(seed, count=count, budget=a.budget, only=a.only, outdir=a.out, timeout=a.timeout,
            rss_limit_mib=a.rss_mib)
    for n in s["notes"]:
        print("note:", n)
    print(f"fuzz: seed {seed}: {s['mutants']} mutants in {s['seconds']:.0f} s, "
          f"{len(s['failures'])} failures, {len(s['notes'])} notes, daemon RSS "
          f"{s['rss_start_mib']:.1f} -> max {s['rss_max_mib']:.1f} MiB")
    print("fuzz: " + ", ".join(f"{k}: {v}" for k, v in sorted(s["counts"].items())))
    for f in s["failures"]:
        print(f)
    if s["failures"]:
        print(f"failing mutants kept in {s['outdir']}")
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
