"""Stress imgfs: reader processes (read, pread at random offsets, mmap) over many images while
edits land (descrip, datatype back and forth, mark clean/dirty).

The editor is the only writer, so after each edit its own fresh open reads the new version
whole, with no edit in between: that read is the reference for the version and its sha256
joins the image's set of versions. At the end, every whole read any reader made must hash to
one of those versions (a mix of two versions matches none), no read may have failed or taken
longer than --max-read-s, and the daemon's RSS, sampled every second, must stay under --rss-mib.

    scripts/stress                                # 16 readers, 100 images, 60 s
    scripts/stress --readers 4 --images 10 --seconds 8
"""
import argparse
import hashlib
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "python"))

SHAPE = (40, 40, 24)  # 150 KiB of float32: a whole read takes several FUSE requests


def sha(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- reader process

def read_whole(path, mode, rng):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if mode == "read":
            chunks = []
            while True:
                b = f.read(rng.choice([4096, 65536, 1 << 20]))
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)
        if mode == "pread":
            cuts = sorted({0, size, *(rng.randrange(size + 1) for _ in range(6))})
            pieces = list(zip(cuts, cuts[1:]))
            rng.shuffle(pieces)
            out = bytearray(size)
            for lo, hi in pieces:
                b = os.pread(f.fileno(), hi - lo, lo)
                if len(b) != hi - lo:
                    raise OSError(f"short pread at {lo}: {len(b)} of {hi - lo} bytes")
                out[lo:hi] = b
            return bytes(out)
        with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
            return bytes(m)


def reader_main(mount_dir, names, seconds, seed, out):
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    with open(out, "x") as log:
        while time.monotonic() < end:
            name = rng.choice(names)
            mode = rng.choice(["read", "pread", "mmap"])
            path = os.path.join(mount_dir, f"{name}.nii")
            t0 = time.monotonic()
            try:
                data = read_whole(path, mode, rng)
                rec = {"name": name, "mode": mode, "sha": sha(data), "len": len(data)}
            except Exception as e:  # every failure is reported, none ends the run
                rec = {"name": name, "mode": mode, "error": f"{type(e).__name__}: {e}"}
            rec["secs"] = time.monotonic() - t0
            log.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------- driver

def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_images(d, count):
    import nibabel as nib
    import numpy as np

    paths = {}
    for i in range(count):
        rng = np.random.default_rng(i)
        data = rng.normal(100, 30, size=SHAPE).astype(np.float32)
        p = os.path.join(d, f"s{i}.nii")
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.5, 1.0])), p)
        paths[f"s{i}"] = p
    return paths


def run(readers=16, images=100, seconds=60.0, seed=0, binary=None, rss_limit_mib=300.0,
        max_read_s=10.0, log=print):
    from imgfs.mount import Mount

    binary = binary or os.environ.get("IMGFS_BIN") or os.path.join(REPO, "target/debug/imgfs")
    work = tempfile.mkdtemp(prefix="imgfs-stress-")  # 0700, ours
    src = os.path.join(work, "src")
    mnt = os.path.join(work, "mnt")
    os.mkdir(src, 0o700)
    os.mkdir(mnt, 0o700)
    paths = make_images(src, images)
    up = subprocess.run([binary, "mount", mnt], capture_output=True, text=True, timeout=60)
    if up.returncode != 0:
        raise RuntimeError(f"imgfs mount failed: {up.stderr}")
    m = Mount(mnt)
    procs = []
    s = {"failures": [], "edits": 0, "reads": 0, "rss_max_mib": 0.0}
    try:
        pid = m.ping()["pid"]
        s["rss_start_mib"] = rss_mib(pid)
        added = subprocess.run([binary, "add", "--mount", mnt,
                                *(f"{n}={p}" for n, p in paths.items())],
                               capture_output=True, text=True, timeout=120)
        if added.returncode != 0:
            raise RuntimeError(f"imgfs add failed: {added.stderr}")
        names = sorted(paths)
        versions = {n: set() for n in names}

        def record(name):
            with open(os.path.join(mnt, f"{name}.nii"), "rb") as f:
                versions[name].add(sha(f.read()))

        for n in names:
            record(n)
        outs = []
        for r in range(readers):
            out = os.path.join(work, f"reader{r}.jsonl")
            outs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--reader", mnt, ",".join(names), str(seconds),
                 str(seed * 1000 + r), out]))
        rng = random.Random(seed)
        start = time.monotonic()
        next_sample = start
        while time.monotonic() - start < seconds:
            name = rng.choice(names)
            op = rng.choice(["descrip", "int16", "float32", "clean", "dirty"])
            if op == "descrip":
                m.set(name, descrip=f"edit {s['edits']}")
            elif op in ("int16", "float32"):
                m.set(name, datatype=op)
            else:
                m.mark(name, op)
            s["edits"] += 1
            record(name)
            if time.monotonic() >= next_sample:
                next_sample += 1.0
                s["rss_max_mib"] = max(s["rss_max_mib"], rss_mib(pid))
        for p in procs:
            try:
                p.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                s["failures"].append(f"reader pid {p.pid} did not finish (hung read?)")
            if p.returncode not in (0, None):
                s["failures"].append(f"reader pid {p.pid} exited {p.returncode}")
        s["rss_max_mib"] = max(s["rss_max_mib"], rss_mib(pid))
        s["rss_end_mib"] = rss_mib(pid)
        s["versions"] = sum(len(v) for v in versions.values())
        s["max_read_s"] = 0.0
        for out in outs:
            if not os.path.exists(out):
                continue
            with open(out) as f:
                for line in f:
                    rec = json.loads(line)
                    s["reads"] += 1
                    s["max_read_s"] = max(s["max_read_s"], rec["secs"])
                    if "error" in rec:
                        s["failures"].append(f"{rec['mode']} of {rec['name']}: {rec['error']}")
                    elif rec["sha"] not in versions[rec["name"]]:
                        s["failures"].append(f"{rec['mode']} of {rec['name']} read {rec['len']} "
                                             f"bytes that are no version the editor produced")
                    if rec["secs"] > max_read_s:
                        s["failures"].append(f"{rec['mode']} of {rec['name']} took "
                                             f"{rec['secs']:.1f} s > {max_read_s} s")
        if s["rss_max_mib"] > rss_limit_mib:
            s["failures"].append(f"daemon RSS {s['rss_max_mib']:.1f} MiB > {rss_limit_mib} MiB")
        try:
            m.ping()
        except Exception as e:
            s["failures"].append(f"daemon does not answer ping after the run: {e}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        m.close()
        subprocess.run([binary, "unmount", mnt], capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    log(f"stress: {readers} readers, {images} images, {seconds:.0f} s: {s['reads']} whole reads "
        f"of {s['versions']} versions, {s['edits']} edits, slowest read {s['max_read_s']:.2f} s, "
        f"daemon RSS {s['rss_start_mib']:.1f} -> max {s['rss_max_mib']:.1f} MiB, "
        f"{len(s['failures'])} failures")
    return s


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--reader":
        mount_dir, names, seconds, seed, out = sys.argv[2:7]
        reader_main(mount_dir, names.split(","), float(seconds), int(seed), out)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-mib", type=float, default=300.0, help="daemon RSS bound")
    p.add_argument("--max-read-s", type=float, default=10.0, help="slowest whole read allowed")
    a = p.parse_args(argv)
    s = run(a.readers, a.images, a.seconds, a.seed, rss_limit_mib=a.rss_mib,
            max_read_s=a.max_read_s)
    for f in s["failures"][:50]:
        print("FAIL", f)
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
