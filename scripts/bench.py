#!/usr/bin/env python3
"""Benchmark imgfs against the ways people do the same thing without it.

Generates its data under --workdir (reused across runs), mounts imgfs in temporary directories
under it, runs every case of the issue against its baseline in the same run (alternating the
order, several times), and prints a table of medians and ratios, with the daemon's RSS (VmRSS
after the case) and CPU time (utime+stime delta over the case).

ratio = baseline median / imgfs median: bigger is better, 1.0 means as fast as the baseline.
Missed targets are reported, never fatal: the exit status is 0 whenever the benchmark ran.

Needs numpy and nibabel (scripts/bench runs it with the repository's .venv), `cat`,
`nifti_tool`, `mrinfo` and `mrstats`, and root (or whatever lets imgfs mount FUSE).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
SMALL_SHAPE = (8, 8, 8)
VOL256_SHAPE = (256, 256, 256)
BIG_XYZ = (96, 96, 60)


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ----------------------------------------------------------------------------- processes


def run(cmd, check=True, capture=False, env=None):
    """Runs cmd with stdout to /dev/null (or captured); returns (seconds, CompletedProcess)."""
    t0 = time.perf_counter()
    p = subprocess.run(
        cmd,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise BenchError(
            f"{' '.join(map(str, cmd))[:300]} exited {p.returncode}: "
            f"{p.stderr.decode(errors='replace').strip()[:2000]}"
        )
    return dt, p


def cat(path):
    return run(["cat", str(path)])[0]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def proc_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ----------------------------------------------------------------------------- protocol

# The control protocol, the socket's name and starting a mount all come from the Python client,
# the one copy of each outside the daemon (the repository's .venv points at python/; a plain
# python3 finds it through this path).
try:
    import imgfs
except ImportError:
    sys.path.insert(0, str(REPO / "python"))
    import imgfs


# ----------------------------------------------------------------------------- mounts

MOUNTS = []  # every live mount, unmounted by cleanup()
MOUNT_ROOT = None  # where mount points are made, when not under --workdir (--mount-root)
UNPRIV_UID = 65534  # the ordinary user of scripts/as-user


class Mount:
    def __init__(self, imgfs_bin, workdir, tag):
        self.imgfs = imgfs_bin
        self.dir = Path(tempfile.mkdtemp(prefix=f"mnt-{tag}-", dir=MOUNT_ROOT or workdir))
        MOUNTS.append(self)
        self.client = None
        try:
            # starts `imgfs mount DIR` (the dir is fresh, so nothing answers there yet)
            self.client = imgfs.Mount(self.dir, binary=str(imgfs_bin))
        except imgfs.ImgfsError as e:
            raise BenchError(str(e)) from e
        self.pid = self.call(op="ping")["pid"]
        self._snap = None

    def cli(self, *args):
        return run([self.imgfs, *args, "--mount", str(self.dir)])[0]

    def call(self, op, **fields):
        try:
            return self.client.request(op, **fields)
        except imgfs.ImgfsError as e:
            raise BenchError(f"{op} {fields.get('name', '')}: {e}") from e

    def stats(self):
        return self.call(op="stats")

    def file(self, name):
        return self.dir / f"{name}.nii"

    def rss(self):
        return proc_rss_mib(self.pid)

    def cpu(self):
        return proc_cpu_s(self.pid)

    def begin_case(self):
        self._snap = self.cpu()

    def end_case(self):
        return {"rss_mib": self.rss(), "cpu_s": self.cpu() - self._snap}

    def unmount(self):
        if self in MOUNTS:
            MOUNTS.remove(self)
        try:
            if self.client is not None:
                self.client.close()  # disconnects and runs `imgfs unmount DIR`
        except imgfs.ImgfsError as e:
            log(f"{e}; lazy umount")
            subprocess.run(["umount", "-l", str(self.dir)], stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                os.rmdir(self.dir)
                break
            except OSError:
                time.sleep(0.05)
        else:
            log(f"could not remove {self.dir}")


def cleanup():
    for m in list(MOUNTS):
        try:
            m.unmount()
        except Exception as e:  # keep going: every mount must go
            log(f"cleanup of {m.dir}: {e}")
    for p in SHM_FILES:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


SHM_FILES = set()


def shm_path(tag):
    p = f"/dev/shm/imgfs-bench-{os.getpid()}-{tag}.nii"
    SHM_FILES.add(p)
    return p


def shm_remove(p):
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    SHM_FILES.discard(p)


# ----------------------------------------------------------------------------- data


def nifti_template(shape, dtype):
    import nibabel as nib
    import numpy as np

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_zooms((2.0, 2.0, 2.0) + (1.0,) * (len(shape) - 3))
    hdr.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    hdr.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    hdr["vox_offset"] = 352
    hdr["descrip"] = b"imgfs bench"
    raw = hdr.binaryblock + b"\0\0\0\0"
    assert len(raw) == 352
    return raw


def write_atomic(path: Path, writer):
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        writer(f)
    os.replace(tmp, path)


def make_data(workdir: Path, size_mib: int, n_small: int):
    import numpy as np

    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    vol_bytes = BIG_XYZ[0] * BIG_XYZ[1] * BIG_XYZ[2] * 4
    nt = max(1, round(size_mib * MIB / vol_bytes))
    big_shape = BIG_XYZ + (nt,)
    big = data / f"big_{'x'.join(map(str, big_shape))}_f32.nii"
    if not big.exists():
        log(f"writing {big.name} ({nt * vol_bytes / MIB:.0f} MiB)")
        rng = np.random.default_rng(1)
        x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in BIG_XYZ), indexing="ij")
        base = (1000 + 10 * x + 5 * y - 3 * z).astype(np.float32)

        def w(f):
            f.write(nifti_template(big_shape, np.float32))
            for t in range(nt):
                vol = base + rng.standard_normal(BIG_XYZ, dtype=np.float32) * 20 + t
                f.write(np.asfortranarray(vol).tobytes(order="F"))

        write_atomic(big, w)
    vol = data / "vol256_i16.nii"
    if not vol.exists():
        log(f"writing {vol.name}")
        rng = np.random.default_rng(2)

        def w(f):
            f.write(nifti_template(VOL256_SHAPE, np.int16))
            arr = rng.integers(-2000, 2000, VOL256_SHAPE, dtype=np.int16)
            f.write(arr.tobytes(order="F"))

        write_atomic(vol, w)
    small = data / f"small{n_small}"
    done = small / ".complete"
    if not done.exists():
        log(f"writing {n_small} small images")
        small.mkdir(exist_ok=True)
        head = nifti_template(SMALL_SHAPE, np.int16)
        ramp = np.arange(np.prod(SMALL_SHAPE), dtype=np.int16)
        for i in range(n_small):
            with open(small / f"s{i:05d}.nii", "wb") as f:
                f.write(head)
                f.write((ramp + (i % 30000)).tobytes())
        done.touch()
    smalls = sorted(str(p) for p in small.glob("s*.nii"))[:n_small]
    return {"big": big, "big_shape": big_shape, "vol256": vol, "small_dir": small,
            "small": smalls}


# ----------------------------------------------------------------------------- nibabel's way


def nib_convert_main(argv):
    """Child process: nibabel's way of applying a datatype change (timings on stdout)."""
    t0 = time.perf_counter()
    import nibabel as nib
    import numpy as np

    inp, out, dtype = argv
    t1 = time.perf_counter()
    img = nib.load(inp)
    arr = np.asanyarray(img.dataobj)  # memory-mapped, file (Fortran) order
    new = nib.Nifti1Image(arr, img.affine, img.header)
    new.set_data_dtype(np.dtype(dtype))
    t2 = time.perf_counter()
    nib.save(new, out)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "save_s": t3 - t2,
                      "fortran": bool(arr.flags.f_contiguous)}))


# ----------------------------------------------------------------------------- results

ROWS = []
LABEL_SUFFIX = ""  # --label-suffix: marks the rows of a run made as another user


def add_row(case, label, imgfs=None, base=None, *, target=None, value=None, res=None,
            notes=(), raw=None):
    """target: ('ratio', x) ratio >= x; ('max', x, unit) value <= x; ('lt', x, unit) value < x.
    imgfs/base: lists of seconds. value: a measured number for absolute targets."""
    row = {"case": case, "label": label + LABEL_SUFFIX, "imgfs_s": imgfs or [], "base_s": base or [],
           "target": target, "value": value, "notes": list(notes), "raw": raw or {}}
    if res:
        row.update(res)
    mi, mb = median(row["imgfs_s"]), median(row["base_s"])
    row["imgfs_median"] = mi if imgfs else None
    row["base_median"] = mb if base else None
    row["ratio"] = mb / mi if imgfs and base and mi > 0 else None
    met = None
    if target:
        kind = target[0]
        if kind == "ratio" and row["ratio"] is not None:
            met = row["ratio"] >= target[1]
        elif kind in ("max", "lt"):
            v = value if value is not None else row["imgfs_median"]
            if v is not None:
                met = v <= target[1] if kind == "max" else v < target[1]
    row["met"] = met
    ROWS.append(row)
    return row


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x * 1000:.2f} ms" if x < 0.1 else f"{x:.3f} s"


def fmt_target(t):
    if not t:
        return "-"
    if t[0] == "ratio":
        return f"ratio >= {t[1]:g}"
    unit = t[2]
    return f"{'<=' if t[0] == 'max' else '<'} {t[1]:g} {unit}"


def fmt_value(row):
    if row["value"] is not None and row["target"] and row["target"][0] in ("max", "lt"):
        unit = row["target"][2]
        if unit == "s":
            return fmt_s(row["value"])
        return f"{row['value']:.2f} {unit}"
    return fmt_s(row["imgfs_median"])


def print_table(out):
    head = ["case", "imgfs median", "baseline median", "ratio", "target", "met?",
            "daemon RSS MiB", "daemon CPU s"]
    lines = []
    for r in ROWS:
        lines.append([
            f"{r['case']} {r['label']}",
            fmt_value(r),
            fmt_s(r["base_median"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            fmt_target(r["target"]),
            {True: "yes", False: "NO", None: "-"}[r["met"]],
            "-" if r.get("rss_mib") is None else f"{r['rss_mib']:.1f}",
            "-" if r.get("cpu_s") is None else f"{r['cpu_s']:.2f}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    sep = "-+-".join("-" * w for w in widths)
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
    print(sep, file=out)
    for l in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(l, widths)), file=out)
    print(file=out)
    print("Notes:", file=out)
    for r in ROWS:
        for n in r["notes"]:
            print(f"  [{r['case']} {r['label']}] {n}", file=out)


# ----------------------------------------------------------------------------- cases


def delta(a, b):
    """The daemon's `stats` counters that changed from a to b, as 'name +n, ...'."""
    parts = [f"{k} +{b[k] - a.get(k, 0)}" for k in sorted(b)
             if k not in ("ok", "images") and isinstance(b[k], int) and b[k] != a.get(k, 0)]
    return ", ".join(parts) or "no counter changed"


def case_clean_read(ctx, m):
    """1. Clean read: cat through the mount (passthrough) vs cat of the original, both hot."""
    R = ctx.repeat
    for key, name in (("big", "big"), ("vol256", "vol256")):
        src = ctx.data[key]
        m.cli("add", f"{name}={src}")
        f = m.file(name)
        m.begin_case()
        s0 = m.stats()
        cat(src), cat(f)  # hot
        ti, tb = [], []
        for i in range(R):
            if i % 2:
                ti.append(cat(f)); tb.append(cat(src))
            else:
                tb.append(cat(src)); ti.append(cat(f))
        s1 = m.stats()
        res = m.end_case()
        served = m.call(op="show", name=name)["served_as"]
        ok = os.path.getsize(f) == os.path.getsize(src)
        add_row(1, f"clean read, cat ({key})", ti, tb, target=("ratio", 0.9), res=res, notes=[
            f"{os.path.getsize(src) / MIB:.0f} MiB; served_as={served}; sizes equal={ok}; "
            f"daemon stats over {R + 1} cats through the mount: {delta(s0, s1)}",
        ])


def verify_same_data(a, b, orig):
    """Compares imgfs' and nibabel's converted images, volume by volume (outside any timing)."""
    import nibabel as nib
    import numpy as np

    ia, ib, io = nib.load(a), nib.load(b), nib.load(orig)
    pa, pb = ia.dataobj, ib.dataobj
    shape = ia.shape
    nt = shape[3] if len(shape) > 3 else 1
    ndiff, maxdiff, err_a, err_b = 0, 0, 0.0, 0.0
    for t in range(nt):
        sl = (Ellipsis, t) if len(shape) > 3 else (Ellipsis,)
        ra = pa._get_unscaled(sl)  # stored values of one volume
        rb = pb._get_unscaled(sl)
        d = ra.astype(np.float64) - rb
        ndiff += int(np.count_nonzero(d))
        maxdiff = max(maxdiff, float(np.max(np.abs(d))))
        o = np.asanyarray(io.dataobj[sl], dtype=np.float64)
        err_a = max(err_a, float(np.max(np.abs(np.asanyarray(pa[sl], dtype=np.float64) - o))))
        err_b = max(err_b, float(np.max(np.abs(np.asanyarray(pb[sl], dtype=np.float64) - o))))
    return (f"check (untimed): dtype {ia.get_data_dtype()} / {ib.get_data_dtype()}; slope, inter "
            f"imgfs ({float(pa.slope):.6g}, {float(pa.inter):.6g}) nibabel "
            f"({float(pb.slope):.6g}, {float(pb.inter):.6g}); stored values differing: {ndiff} "
            f"of {int(np.prod(shape))} (max |diff| {maxdiff:g}); max |error| vs the original: "
            f"imgfs {err_a:.4g}, nibabel {err_b:.4g}")


def case_dirty(ctx, m):
    """2 and 3. Dirty first read after a datatype change, and the re-read."""
    R = ctx.repeat
    py = sys.executable
    plans = [("big", "float32", "int16", "datatype=int16")]
    if not ctx.args.quick:
        plans.append(("vol256", "int16", "float32", "datatype=float32"))
    for key, dfrom, dto, edit in plans:
        src = ctx.data[key]
        first_i, first_b, re_i, re_b, set_t, nib_inner = [], [], [], [], [], []
        reads_first, deltas_first, deltas_re, sizes = [], [], [], []
        verify_note = None
        m.begin_case()
        s0 = m.stats()
        cat(src)  # the original hot for both sides
        for i in range(R):
            name = f"d{key}{i}"
            m.cli("add", f"{name}={src}")  # a fresh version, outside the timing
            f = m.file(name)
            out = shm_path(f"{key}{i}")

            def imgfs_way():
                a = m.stats()
                t0 = time.perf_counter()
                m.cli("set", name, edit)
                t1 = time.perf_counter()
                cat(f)
                t2 = time.perf_counter()
                b = m.stats()
                reads_first.append(b["rendered_reads"] - a["rendered_reads"])
                deltas_first.append(delta(a, b))
                sizes.append(os.path.getsize(f))
                set_t.append(t1 - t0)
                first_i.append(t2 - t0)

            def nib_way():
                t0 = time.perf_counter()
                _, p = run([py, str(Path(__file__).resolve()), "--nib-convert", str(src), out,
                            dto], capture=True)
                cat(out)
                first_b.append(time.perf_counter() - t0)
                nib_inner.append(json.loads(p.stdout.decode().strip().splitlines()[-1]))

            if i % 2:
                nib_way(); imgfs_way()
            else:
                imgfs_way(); nib_way()
            # 3. re-read of the same version vs cat of the /dev/shm copy
            a = m.stats()
            if i % 2:
                re_i.append(cat(f)); re_b.append(cat(out))
            else:
                re_b.append(cat(out)); re_i.append(cat(f))
            deltas_re.append(delta(a, m.stats()))
            if i == R - 1:
                res = m.end_case()
                s1 = m.stats()
                if not ctx.args.no_verify:
                    verify_note = verify_same_data(str(f), out, str(src))
            shm_remove(out)
            m.call(op="rm", name=name)
        notes = [
            f"{key} {dfrom} -> {dto}: imgfs = `imgfs set NAME {edit}` (CLI) + first `cat` of "
            f"the new version; a fresh version per repetition (`imgfs add` under a new name, "
            f"untimed). `imgfs set` alone: median {fmt_s(median(set_t))}.",
            f"baseline = a separate Python process per repetition (interpreter start, import "
            f"nibabel, load (mmap), Nifti1Image(memmap in Fortran order), set_data_dtype, "
            f"nib.save to /dev/shm) + `cat` of the copy. Inside that process: import "
            f"{fmt_s(median([d['import_s'] for d in nib_inner]))}, load "
            f"{fmt_s(median([d['load_s'] for d in nib_inner]))}, save "
            f"{fmt_s(median([d['save_s'] for d in nib_inner]))}; array Fortran-ordered="
            f"{all(d['fortran'] for d in nib_inner)}.",
            f"in-process variant (nibabel load+save only, no interpreter start, import or "
            f"cat of the copy) / imgfs: ratio "
            f"{median([d['load_s'] + d['save_s'] for d in nib_inner]) / median(first_i):.2f}",
            f"daemon stats per repetition: `set` + first read: {' | '.join(deltas_first)}"
            + (f" (~{sizes[0] / 1024 / median(reads_first):.0f} KiB per rendered read)"
               if median(reads_first) else "")
            + f"; re-read: {' | '.join(deltas_re)}",
        ]
        if verify_note:
            notes.append(verify_note)
        notes.append("daemon RSS/CPU: after / over all repetitions (including the untimed adds)")
        add_row(2, f"dirty first read ({key} {dfrom}->{dto})", first_i, first_b,
                target=("ratio", 3.0), res=res, notes=notes,
                raw={"set_s": set_t, "nibabel_inner": nib_inner})
        add_row(3, f"dirty re-read ({key})", re_i, re_b, target=("ratio", 0.5), res=res,
                notes=["second `cat` of the same rendered version vs `cat` of nibabel's "
                       "/dev/shm copy (both hot)"])


def case_header_edit(ctx, m):
    """4. Header-only edit of the large image: RSS growth, full read vs direct."""
    R = ctx.repeat
    src = ctx.data["big"]
    growth, first_i, re_i, base, set_t = [], [], [], [], []
    reads_first, deltas_first, deltas_re = [], [], []
    m.begin_case()
    s0 = m.stats()
    cat(src)
    for i in range(R):
        name = f"h{i}"
        m.cli("add", f"{name}={src}")
        f = m.file(name)
        rss0 = m.rss()
        set_t.append(m.cli("set", name, f"descrip=imgfs bench header edit {i}"))
        a = m.stats()
        if i % 2:
            base.append(cat(src)); first_i.append(cat(f))
        else:
            first_i.append(cat(f)); base.append(cat(src))
        b = m.stats()
        re_i.append(cat(f))
        reads_first.append(b["rendered_reads"] - a["rendered_reads"])
        deltas_first.append(delta(a, b))
        deltas_re.append(delta(b, m.stats()))
        growth.append(m.rss() - rss0)
        if i == R - 1:
            res = m.end_case()
            s1 = m.stats()
            served = m.call(op="show", name=name)["served_as"]
        m.call(op="rm", name=name)
    add_row(4, "header edit: RSS growth (max)", target=("lt", 4.0, "MiB"), value=max(growth),
            res=res, notes=[
                f"`imgfs set NAME descrip=...` then two full `cat`s, per repetition on a fresh "
                f"version; VmRSS after minus before the edit: "
                f"{', '.join(f'{g:+.2f}' for g in growth)} MiB (median {median(growth):+.2f})",
                f"`imgfs set` median {fmt_s(median(set_t))}; served_as={served}; "
                f"daemon stats over the case ({2 * R} full reads of "
                f"{os.path.getsize(src) / MIB:.0f} MiB): {delta(s0, s1)}",
            ])
    add_row(4, "header edit: first full read", first_i, base, target=("ratio", 0.5), res=res,
            notes=["first `cat` of the edited version vs `cat` of the original (hot); daemon "
                   f"stats per first read: {' | '.join(deltas_first)}"
                   + (f" (~{os.path.getsize(src) / 1024 / median(reads_first):.0f} KiB per "
                      f"rendered read)" if median(reads_first) else "")
                   + f"; per re-read: {' | '.join(deltas_re)}"])
    add_row(4, "header edit: re-read", re_i, base, target=("ratio", 0.5), res=res,
            notes=["second `cat` of the edited version vs `cat` of the original (hot)"])


def case_header_readers(ctx, m):
    """5. nifti_tool -disp_hdr and mrinfo on a dirty (datatype-changed) large image."""
    R = max(ctx.repeat, 15)
    src = ctx.data["big"]
    name = "hdrread"
    m.cli("add", f"{name}={src}")
    m.cli("set", name, "datatype=int16")
    f = m.file(name)
    tools = []
    if shutil.which("nifti_tool"):
        tools.append(("nifti_tool -disp_hdr", lambda p: ["nifti_tool", "-disp_hdr", "-infiles",
                                                         str(p)]))
    else:
        log("nifti_tool not found: case 5 skips it")
    if shutil.which("mrinfo"):
        tools.append(("mrinfo", lambda p: ["mrinfo", str(p)]))
    else:
        log("mrinfo not found: case 5 skips it")
    for label, mk in tools:
        for fresh in (False, True):
            m.begin_case()
            sc = m.stats()
            run(mk(src)), run(mk(f))  # warm: binaries, libraries, header pages
            s0 = m.stats()
            ti, tb = [], []
            for i in range(R):
                if fresh:  # a new version (new inode, nothing cached by the kernel), untimed
                    m.cli("set", name, f"descrip=imgfs bench {label[:6]} {i}")
                if i % 2:
                    tb.append(run(mk(src))[0]); ti.append(run(mk(f))[0])
                else:
                    ti.append(run(mk(f))[0]); tb.append(run(mk(src))[0])
            s1 = m.stats()
            res = m.end_case()
            _, p = run(mk(f), capture=True)
            out = p.stdout.decode(errors="replace")
            dline = next((l for l in out.splitlines()
                          if l.strip().lower().startswith(("datatype", "data type"))), "")
            shows = (dline.split()[-1] == "4" if dline.lower().strip().startswith("datatype")
                     else "16 bit integer" in dline)
            how = ("a new version before each run (`imgfs set descrip=...`, untimed)" if fresh
                   else "the same version each run")
            add_row(5, f"header read, dirty, {'new version' if fresh else 'same version'}: "
                       f"{label}", ti, tb, target=("ratio", 0.5), res=res, notes=[
                f"{R} runs each on a dirty image (datatype float32->int16), {how}, vs the "
                f"original, after one untimed run. Daemon stats: untimed first run: "
                f"{delta(sc, s0)}; {R} timed runs: {delta(s0, s1)} (the file is "
                f"{os.path.getsize(f) / MIB:.0f} MiB); daemon CPU over the case "
                f"{res['cpu_s']:.2f} s for {R + 1} runs (10 ms clock ticks); "
                f"output shows int16: {shows}",
            ])
    m.call(op="rm", name=name)


def make_gz_data(workdir: Path, big: bool):
    """Realistic compressed images written by nibabel (its default gzip level): a smooth
    anatomy-like volume series with noise, int16 and float32, about 256 MiB each decompressed,
    and with --gz-big a float32 one of about 1 GiB."""
    import nibabel as nib
    import numpy as np

    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    vol_bytes = BIG_XYZ[0] * BIG_XYZ[1] * BIG_XYZ[2] * 4
    plans = [("gz256_i16", np.int16, 256 * MIB // (vol_bytes // 2)),
             ("gz256_f32", np.float32, 256 * MIB // vol_bytes)]
    if big:
        plans.append(("gz1g_f32", np.float32, 1024 * MIB // vol_bytes))
    out = {}
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in BIG_XYZ), indexing="ij")
    base = (1000 + 10 * x + 5 * y - 3 * z).astype(np.float32)
    for key, dtype, nt in plans:
        path = data / f"{key}_{nt}.nii.gz"
        if not path.exists():
            log(f"writing {path.name} with nibabel")
            rng = np.random.default_rng(3)
            arr = np.empty(BIG_XYZ + (nt,), dtype=dtype, order="F")
            for t in range(nt):
                arr[..., t] = base + rng.standard_normal(BIG_XYZ, dtype=np.float32) * 20 + t
            img = nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]))
            img.header.set_data_dtype(dtype)
            tmp = path.with_name(path.name + ".part.nii.gz")
            nib.save(img, tmp)
            os.replace(tmp, path)
            del arr, img
        out[key] = path
    return out


def case_gzip(ctx, m):
    """gz. Compressed originals (issue 9): header readers, first pass, index reuse, memory."""
    R = ctx.repeat
    py = sys.executable
    gz = make_gz_data(ctx.workdir, ctx.args.gz_big)
    src = gz["gz256_i16"]
    for p in gz.values():
        cat(p)  # hot in the page cache for both sides

    # Header readers on a header-edited .nii.gz through the mount vs on the original.
    name = "gzhdr"
    m.cli("add", f"{name}={src}")
    f = m.file(name)
    tools = [("nifti_tool -disp_hdr", lambda p: ["nifti_tool", "-disp_hdr", "-infiles", str(p)]),
             ("mrinfo", lambda p: ["mrinfo", str(p)])]
    for label, mk in tools:
        m.begin_case()
        m.cli("set", name, "descrip=warm")
        run(mk(src)), run(mk(f))
        ti, tb = [], []
        for i in range(max(R, 9)):
            m.cli("set", name, f"descrip=imgfs bench gz {label[:6]} {i}")  # new version
            if i % 2:
                tb.append(run(mk(src))[0]); ti.append(run(mk(f))[0])
            else:
                ti.append(run(mk(f))[0]); tb.append(run(mk(src))[0])
        add_row("gz", f"header-edited .nii.gz: {label}", ti, tb, target=("ratio", 0.5),
                res=m.end_case(), notes=[
                    f"{src.name}: a new header version before each run (untimed), through "
                    f"the mount vs on the original .nii.gz"])
    m.call(op="rm", name=name)

    # First full cat of a header-edited image (fresh index each time) vs pigz -dc.
    first, pig, rss_growth = [], [], []
    m.begin_case()
    for i in range(R):
        name = f"gzcat{i}"
        m.cli("add", f"{name}={src}")
        m.cli("set", name, f"descrip=imgfs bench gz cat {i}")
        rss0 = m.rss()
        if i % 2:
            pig.append(run(["pigz", "-dc", str(src)])[0]); first.append(cat(m.file(name)))
        else:
            first.append(cat(m.file(name))); pig.append(run(["pigz", "-dc", str(src)])[0])
        rss_growth.append(m.rss() - rss0)
        if i < R - 1:
            m.call(op="rm", name=name)
    add_row("gz", "first full cat of header-edited .nii.gz vs pigz -dc", first, pig,
            target=("ratio", 1.0), res=m.end_case(), notes=[
                f"{src.name} ({os.path.getsize(src) / MIB:.0f} MiB compressed); a fresh image "
                f"(new index) per repetition; daemon RSS growth per first read: "
                f"{', '.join(f'{g:+.1f}' for g in rss_growth)} MiB"])

    # The index outlives edits: the last 1 MiB of a new version after one full pass.
    name = f"gzcat{R - 1}"
    size = os.path.getsize(m.file(name))
    tail = []
    m.begin_case()
    for i in range(max(R, 5)):
        m.cli("set", name, f"descrip=imgfs bench gz tail {i}")
        t0 = time.perf_counter()
        with open(m.file(name), "rb") as fh:
            fh.seek(size - MIB)
            got = len(fh.read(MIB))
        tail.append(time.perf_counter() - t0)
        if got != MIB:
            raise BenchError(f"read {got} bytes of the last MiB")
    add_row("gz", "last 1 MiB of a new header version after one pass", tail,
            target=("max", 0.020, "s"), value=median(tail), res=m.end_case(), notes=[
                "open + seek + read(1 MiB) in this process, a new version (`imgfs set`, "
                "untimed) before each"])
    m.call(op="rm", name=name)

    # Memory: 20 header-edited 256 MiB .nii.gz images (20 different files), each read once.
    copies = []
    try:
        for i in range(20):
            c = ctx.workdir / "data" / f"gzcopy{i}.nii.gz"
            shutil.copyfile(src, c)
            copies.append(c)
        m.begin_case()
        rss0 = m.rss()
        for i, c in enumerate(copies):
            m.cli("add", f"gzmany{i}={c}")
            m.cli("set", f"gzmany{i}", "descrip=imgfs bench gz many")
            cat(m.file(f"gzmany{i}"))
        res = m.end_case()
        add_row("gz", "daemon RSS after 20 header-edited 256 MiB .nii.gz read once",
                target=("max", 300.0, "MiB"), value=m.rss(), res=res, notes=[
                    f"RSS before the 20 adds {rss0:.1f} MiB; 20 copies of {src.name}"])
        for i in range(20):
            m.call(op="rm", name=f"gzmany{i}")
    finally:
        for c in copies:
            c.unlink(missing_ok=True)

    # Memory: fully reading a header-edited 1 GiB .nii.gz.
    if "gz1g_f32" in gz:
        # A mount of its own, so that no earlier case's memory hides the growth.
        big = Mount(ctx.imgfs, ctx.workdir, "gzbig")
        name = "gzbig"
        big.begin_case()
        big.cli("add", f"{name}={gz['gz1g_f32']}")
        big.cli("set", name, "descrip=imgfs bench gz big")
        rss0 = big.rss()
        t = cat(big.file(name))
        growth = big.rss() - rss0
        add_row("gz", "RSS growth, full read of header-edited 1 GiB .nii.gz",
                target=("max", 80.0, "MiB"), value=growth, res=big.end_case(), notes=[
                    f"{gz['gz1g_f32'].name}, on a fresh mount: first full cat {t:.2f} s; RSS "
                    f"before {rss0:.1f} MiB"])
        big.unmount()

    # set datatype=int16 + first cat of the float32 .nii.gz vs nibabel.
    src = gz["gz256_f32"]
    ti, tb, inner, t_set, t_pigz = [], [], [], [], []
    m.begin_case()
    for i in range(R):
        name = f"gzdt{i}"
        m.cli("add", f"{name}={src}")
        out = shm_path(f"gzdt{i}")

        def imgfs_way():
            t0 = time.perf_counter()
            m.cli("set", name, "datatype=int16")
            t_set.append(time.perf_counter() - t0)
            cat(m.file(name))
            ti.append(time.perf_counter() - t0)

        def nib_way():
            t0 = time.perf_counter()
            _, p = run([py, str(Path(__file__).resolve()), "--nib-convert", str(src), out,
                        "int16"], capture=True)
            cat(out)
            tb.append(time.perf_counter() - t0)
            inner.append(json.loads(p.stdout.decode().strip().splitlines()[-1]))

        if i % 2:
            nib_way(); imgfs_way()
        else:
            imgfs_way(); nib_way()
        shm_remove(out)
        m.call(op="rm", name=name)
        t_pigz.append(run(["pigz", "-dc", str(src)])[0])
    add_row("gz", "set datatype=int16 + first cat of float32 .nii.gz vs nibabel", ti, tb,
            target=("ratio", 1.2), res=m.end_case(), notes=[
                f"{src.name}; nibabel: a process that loads the .nii.gz, set_data_dtype, saves "
                f"to /dev/shm, then cat; its load+convert median "
                f"{median([r['load_s'] for r in inner]):.2f} s, save "
                f"{median([r['save_s'] for r in inner]):.2f} s",
                f"imgfs: `set` (the value-range pass, which is the index's first pass: one "
                f"sequential inflate) median {median(t_set):.2f} s, then the first `cat` "
                f"(inflating again from the index, two cores) "
                f"{median([a - b for a, b in zip(ti, t_set)]):.2f} s; one inflate of the file "
                f"by `pigz -dc` takes {median(t_pigz):.2f} s"])


def case_mrstats(ctx, m):
    """6. mrstats -output mean -allvolumes through the mount (clean) vs direct."""
    if ctx.args.skip_mrstats:
        log("case 6 skipped (--skip-mrstats)")
        return
    if not shutil.which("mrstats"):
        log("mrstats not found: case 6 skipped")
        return
    R = ctx.args.mrstats_repeat
    src = ctx.data["big"]
    name = "big"
    if not m.file(name).exists():
        m.cli("add", f"{name}={src}")
    f = m.file(name)
    cmd = lambda p: ["mrstats", "-quiet", "-output", "mean", "-allvolumes", str(p)]
    cat(src), cat(f)
    m.begin_case()
    ti, tb, outs = [], [], {}
    for i in range(R):
        log(f"case 6: mrstats repetition {i + 1}/{R}")
        for which in ((f, src) if i % 2 == 0 else (src, f)):
            dt, p = run(cmd(which), capture=True)
            (ti if which == f else tb).append(dt)
            outs[which == f] = p.stdout
    res = m.end_case()
    same = outs.get(True) == outs.get(False)
    add_row(6, "mrstats mean -allvolumes (clean)", ti, tb, target=("ratio", 0.8), res=res,
            notes=[f"{R} repetitions (--mrstats-repeat); outputs identical: {same}"])


def case_scale(ctx):
    """7. 10,000 small images: add time, ls -l time, daemon RSS."""
    smalls = ctx.data["small"]
    n = len(smalls)
    R = ctx.args.scale_repeat
    add_sock, add_cli, ls_first, ls_hot, rss, cpu, base_ls = [], [], [], [], [], [], []
    run(["ls", "-l", str(ctx.data["small_dir"])])  # hot
    for i in range(R):
        log(f"case 7: repetition {i + 1}/{R}")
        # protocol: one connection, n add lines, one answer awaited per line
        m = Mount(ctx.imgfs, ctx.workdir, "scale")
        try:
            m.begin_case()
            t0 = time.perf_counter()
            for j, p in enumerate(smalls):
                m.client.add(p, name=f"s{j:05d}")
            add_sock.append(time.perf_counter() - t0)
            listed = len(os.listdir(m.dir))
            if listed != n:
                raise BenchError(f"the mount lists {listed} files after adding {n}")
            ls_first.append(run(["ls", "-l", str(m.dir)])[0])
            for k in range(ctx.repeat):
                if k % 2:
                    base_ls.append(run(["ls", "-l", str(ctx.data["small_dir"])])[0])
                    ls_hot.append(run(["ls", "-l", str(m.dir)])[0])
                else:
                    ls_hot.append(run(["ls", "-l", str(m.dir)])[0])
                    base_ls.append(run(["ls", "-l", str(ctx.data["small_dir"])])[0])
            end = m.end_case()
            rss.append(end["rss_mib"])
            cpu.append(end["cpu_s"])
        finally:
            m.unmount()
        # CLI: a few big `imgfs add` invocations
        m = Mount(ctx.imgfs, ctx.workdir, "scalecli")
        try:
            chunks = 4
            per = (n + chunks - 1) // chunks
            t0 = time.perf_counter()
            for k in range(0, n, per):
                m.cli("add", *(f"s{j:05d}={smalls[j]}" for j in range(k, min(n, k + per))))
            add_cli.append(time.perf_counter() - t0)
        finally:
            m.unmount()
    res = {"rss_mib": median(rss), "cpu_s": median(cpu)}
    add_row(7, f"add {n} images (socket)", add_sock, target=("max", 5.0, "s"),
            value=median(add_sock), res=res, notes=[
                f"one connection to the control socket from Python, {n} `add` lines, each "
                f"answer awaited; a fresh mount per repetition ({R}, --scale-repeat); "
                f"daemon CPU s = over add + all ls runs"])
    add_row(7, f"add {n} images (CLI x4)", add_cli, target=("max", 5.0, "s"),
            value=median(add_cli), notes=[
                f"4 `imgfs add --mount DIR NAME=PATH ...` invocations of {(n + 3) // 4} "
                f"images each, on another fresh mount"])
    add_row(7, "ls -l DIR, first", ls_first, target=("max", 0.2, "s"),
            value=median(ls_first), notes=[
                "first `ls -l` after the adds (kernel has no cached entries/attributes)"])
    add_row(7, "ls -l DIR, repeated", ls_hot, base_ls, target=("max", 0.2, "s"),
            value=median(ls_hot), notes=[
                f"baseline = `ls -l` of the {n} originals' directory on disk (hot); "
                f"ratio informational"])
    add_row(7, f"daemon RSS with {n} images", target=("max", 200.0, "MiB"),
            value=max(rss), res=res, notes=[
                f"VmRSS after adds and ls runs: {', '.join(f'{r:.1f}' for r in rss)} MiB "
                f"(max shown)"])


def case_handoff(ctx):
    """Issue 5: scripts/bench_handoff.py, when another helper has written it."""
    script = REPO / "scripts" / "bench_handoff.py"
    if not script.exists():
        log("scripts/bench_handoff.py not present: handoff case skipped")
        ctx.handoff = {"present": False}
        return
    p = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    helptext = p.stdout + p.stderr
    base = [sys.executable, str(script)]
    for opt, val in (("--mib", str(ctx.args.size_mib)), ("--runs", str(ctx.repeat))):
        if opt in helptext:
            base += [opt, val]
    # its private mount goes under our workdir (tempfile honours TMPDIR); our binary
    env = dict(os.environ, TMPDIR=str(ctx.workdir), IMGFS_BIN=str(ctx.imgfs))
    variants = [[]]
    if "--order" in helptext:
        variants = [["--order", "F"], ["--order", "C"]]
    ctx.handoff = {"present": True, "runs": []}
    for extra in variants:
        cmd = base + extra
        log(f"running {' '.join(cmd)}")
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        ctx.handoff["runs"].append({"cmd": cmd, "rc": p.returncode, "stdout": p.stdout,
                                    "stderr": p.stderr[-4000:],
                                    "seconds": time.perf_counter() - t0})


def case_unprivileged(ctx):
    """1-3 as an ordinary user: no CAP_SYS_ADMIN, so no passthrough; clean files forwarded."""
    # The daemon and every reader run as uid 65534 in a private mount namespace (scripts/as-user):
    # root cannot read that user's mount, as nobody else can, so the whole cases run there, in a
    # child run of this script, and their rows join this run's table.
    if os.geteuid() != 0:
        log("case unpriv skipped: it needs root to become the ordinary user (scripts/as-user)")
        return
    own = ctx.workdir / "unprivileged"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(mode=0o700)
    os.chown(own, UNPRIV_UID, UNPRIV_UID)
    out = own / "rows.json"
    cmd = [str(REPO / "scripts" / "as-user"), "--expose", str(REPO), "--expose", sys.base_prefix,
           "--expose", str(ctx.workdir), "--expose", str(ctx.imgfs.parent), "--",
           sys.executable, str(Path(__file__).resolve()), "--cases", "1,2,write", "--quick",
           "--no-verify", "--no-build", "--imgfs", str(ctx.imgfs),
           "--workdir", str(ctx.workdir), "--mount-root", str(own),
           "--size-mib", str(ctx.args.size_mib), "--small-count", str(ctx.args.small_count),
           "--repeat", str(ctx.repeat), "--label-suffix", ", unprivileged", "--json", str(out)]
    log("running cases 1-3 as uid 65534: " + " ".join(cmd))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if p.returncode != 0 or not out.exists():
        raise BenchError(f"the unprivileged run failed (exit {p.returncode}):\n{p.stdout[-3000:]}")
    ROWS.extend(json.loads(out.read_text())["rows"])
    shutil.rmtree(own, ignore_errors=True)


def shmem_mib():
    """Shared memory in use machine-wide (memfds and tmpfs count here), MiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dd_into(path, mib):
    t0 = time.perf_counter()
    run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "status=none"])
    return time.perf_counter() - t0


def case_write(ctx, m):
    """write: dd bs=1M of 512 MiB into the mount vs into /dev/shm, read back, daemon memory."""
    R, mib = ctx.repeat, 512
    shm = shm_path("dd")
    out = m.dir / "dd.bin"
    m.begin_case()
    tw, bw, tr, br, grown = [], [], [], [], []
    for _ in range(R):
        shm_remove(shm)
        SHM_FILES.add(shm)
        bw.append(dd_into(shm, mib))
        br.append(cat(shm))
        shm_remove(shm)
        if out.exists():
            out.unlink()
        rss0, shmem0 = m.rss(), shmem_mib()
        tw.append(dd_into(out, mib))
        grown.append((m.rss() - rss0, shmem_mib() - shmem0))
        tr.append(cat(out))
    res = m.end_case()
    ok = os.path.getsize(out) == mib * MIB
    out.unlink()
    add_row("write", f"dd bs=1M of {mib} MiB into the mount vs /dev/shm", tw, bw,
            target=("ratio", 0.8), res=res, notes=[f"size right={ok}"])
    add_row("write", "read it back (cat) vs /dev/shm", tr, br, target=("ratio", 0.9), res=res)
    # The first run only: a later one starts while the kernel may still hold the previous
    # (unlinked) file's inode, whose memory goes when the kernel forgets it.
    held = grown[0][0] + grown[0][1]
    add_row("write", f"memory for the written {mib} MiB file (daemon RSS + shared memory)",
            target=("max", 1.1 * mib, "MiB"), value=held, res=res, notes=[
                f"first run; daemon RSS growth / machine Shmem growth per run (MiB): "
                f"{[(round(a), round(b)) for a, b in grown]}"])


# ----------------------------------------------------------------------------- main


class Ctx:
    pass


def build(args):
    if args.imgfs:
        return Path(args.imgfs).resolve()
    binary = REPO / "target" / "release" / "imgfs"
    if not args.no_build:
        log("cargo build --release -j1")
        p = subprocess.run(["cargo", "build", "--release", "-j1"], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise BenchError(f"cargo build --release failed:\n{p.stderr[-3000:]}")
    if not binary.exists():
        raise BenchError(f"{binary} does not exist (build it, or pass --imgfs)")
    return binary


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--nib-convert":
        return nib_convert_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/imgfs-bench",
                    help="generated data (reused) and temporary mounts (default %(default)s)")
    ap.add_argument("--size-mib", type=int, default=512,
                    help="size of the 4D float32 image, 96x96x60xT (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions per case (median)")
    ap.add_argument("--mrstats-repeat", type=int, default=3)
    ap.add_argument("--scale-repeat", type=int, default=3,
                    help="fresh mounts for the 10,000-image case")
    ap.add_argument("--small-count", type=int, default=10000)
    ap.add_argument("--skip-mrstats", action="store_true")
    ap.add_argument("--gz-big", action="store_true",
                    help="case gz: also write and read a 1 GiB .nii.gz (slow to generate)")
    ap.add_argument("--skip-handoff", action="store_true")
    ap.add_argument("--cases", default="1,2,4,5,6,7,gz,write,handoff,unpriv",
                    help="comma-separated subset of 1,2,4,5,6,7,gz,write,handoff,unpriv (2 "
                         "includes 3; unpriv runs 1-3 and write as an ordinary user, without "
                         "passthrough)")
    ap.add_argument("--mount-root", help="make mount points here (default: under --workdir)")
    ap.add_argument("--label-suffix", default="", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="only the issue's images (no extra 256^3 dirty-read rows)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the untimed comparison of imgfs' and nibabel's int16 data")
    ap.add_argument("--imgfs", help="imgfs binary (default: build target/release/imgfs)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--json", help="write raw timings here")
    args = ap.parse_args()
    cases = set(args.cases.split(","))
    global MOUNT_ROOT, LABEL_SUFFIX
    MOUNT_ROOT, LABEL_SUFFIX = args.mount_root, args.label_suffix

    def on_term(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C even when started with SIGINT ignored (a background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    ctx = Ctx()
    ctx.args = args
    ctx.repeat = args.repeat
    ctx.workdir = Path(args.workdir).resolve()
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    ctx.handoff = None
    started = time.time()
    try:
        ctx.imgfs = build(args)
        ctx.data = make_data(ctx.workdir, args.size_mib, args.small_count)
        m = Mount(ctx.imgfs, ctx.workdir, "main")
        steps = [("1", case_clean_read), ("2", case_dirty), ("4", case_header_edit),
                 ("5", case_header_readers), ("6", case_mrstats), ("gz", case_gzip),
                 ("write", case_write)]
        for key, fn in steps:
            if key in cases:
                log(f"case {key}: {fn.__doc__.splitlines()[0]}")
                fn(ctx, m)
        m.unmount()
        if "7" in cases:
            log("case 7: 10,000 small images")
            case_scale(ctx)
        if "handoff" in cases and not args.skip_handoff:
            case_handoff(ctx)
        if "unpriv" in cases:
            log("case unpriv: cases 1-3 and write as an ordinary user (forwarded clean reads)")
            case_unprivileged(ctx)
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the unmounting finish
        log("interrupted: unmounting")
        cleanup()
        print_table(sys.stdout)
        return 130
    except Exception as e:
        if isinstance(e, BenchError):
            log(f"error: {e}")
        else:
            import traceback
            traceback.print_exc()
        cleanup()
        if ROWS:
            print_table(sys.stdout)
        return 1
    finally:
        cleanup()

    print(f"imgfs benchmark: {ctx.data['big'].name} "
          f"({os.path.getsize(ctx.data['big']) / MIB:.0f} MiB), "
          f"{ctx.data['vol256'].name}, {len(ctx.data['small'])} small images; "
          f"repeat {args.repeat}; ratio = baseline/imgfs (bigger is better); "
          f"{platform.release()}, {os.cpu_count()} CPUs; {time.time() - started:.0f} s\n")
    print_table(sys.stdout)
    if ctx.handoff and ctx.handoff.get("present"):
        for r in ctx.handoff["runs"]:
            print(f"\nIssue 5 handoff: {' '.join(Path(c).name if c.startswith('/') else c for c in r['cmd'])}"
                  f" (exit {r['rc']}, {r['seconds']:.1f} s):")
            print(r["stdout"].rstrip())
            if r["rc"] != 0:
                print(r["stderr"].rstrip())
    elif ctx.handoff is not None:
        print("\nIssue 5 handoff: scripts/bench_handoff.py not present, skipped")
    if args.json:
        dump = {"args": vars(args), "imgfs": str(ctx.imgfs),
                "data": {k: (str(v) if not isinstance(v, list) else len(v))
                         for k, v in ctx.data.items()},
                "kernel": platform.release(), "rows": ROWS, "handoff": ctx.handoff}
        Path(args.json).write_text(json.dumps(dump, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
