#!/usr/bin/env python3
"""How much faster is handing an in-memory image to a tool through imgfs than saving it?

Times `imgfs.as_filename` of a new 512 MiB float32 4D image in Fortran order, by both routes,
against `nib.save` of the same image to /dev/shm (the fastest place a temporary file could go):

- copy route: an ordinary numpy array, copied once into a fresh memfd the daemon maps;
- zero-copy route: an `imgfs.empty` array, whose own memfd is sent (the caller's mapping turns
  copy-on-write).

Median of --runs runs each (the methods take turns, so load on a shared machine hits all
alike), with the ratio save/handoff. Target: handoff >= 3x faster than nib.save. Allocating and
filling the arrays is outside every timing (nib.save also starts from an existing array); the
costs the zero-copy route moves elsewhere (filling shared memory, the first write to each page
after the handoff) are printed separately and are not in the ratios. Reports only: timing on a
shared machine is too noisy to assert.

    python scripts/bench_handoff.py [--mount DIR] [--mib 512] [--runs 5] [--order F|C]

`--order C` makes the ordinary array C-ordered (fresh from numpy arithmetic): both the copy
route and nib.save then pay for reordering; the zero-copy array is always in file order.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

try:
    import imgfs
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import imgfs

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def shape_for(mib):
    nx, ny, nz = 128, 128, 64
    return nx, ny, nz, max(1, mib * 2**20 // (nx * ny * nz * 4))


def fill(data):
    """Values in file order (whatever the memory order): the same numbers in every array."""
    flat = np.reshape(data, -1, order="F") if data.flags.f_contiguous else None
    if flat is None or not np.shares_memory(flat, data):
        data[...] = (np.arange(data.size, dtype=np.float32) % 1000).reshape(data.shape, order="F")
    else:
        flat[:] = np.arange(flat.size, dtype=np.float32) % 1000
    return data


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_handoff(mount, data):
    img = nib.Nifti1Image(data, AFFINE)
    elapsed, path = timed(lambda: imgfs.as_filename(img, mount))
    assert os.path.dirname(path) == mount.dir, path
    mount.rm(os.path.basename(path)[: -len(".nii")])  # frees the daemon's version before the next run
    return elapsed


def time_save(data):
    img = nib.Nifti1Image(data, AFFINE)
    fd, path = tempfile.mkstemp(suffix=".nii", dir="/dev/shm")
    os.close(fd)
    try:
        return timed(lambda: nib.save(img, path))[0]
    finally:
        os.unlink(path)


def run(mount, args):
    shape = shape_for(args.mib)
    plain = fill(np.empty(shape, dtype=np.float32, order=args.order))
    times = {"copy": [], "zero": [], "save": [], "fill_np": [], "fill_shm": [], "cow": []}
    for _ in range(args.runs):
        times["save"].append(time_save(plain))
        times["copy"].append(time_handoff(mount, plain))
        # a fresh shared array each run: a handed-over one is copy-on-write, sent by copy next
        shared = imgfs.empty(shape, np.float32)
        times["fill_shm"].append(timed(lambda: shared.fill(1.5))[0])  # first touch of each page
        assert imgfs.is_shared(shared)
        times["zero"].append(time_handoff(mount, shared))
        assert not imgfs.is_shared(shared)
        times["cow"].append(timed(lambda: np.add(shared, 1, out=shared))[0])
        del shared
        fresh = np.empty(shape, dtype=np.float32, order="F")
        times["fill_np"].append(timed(lambda: fresh.fill(1.5))[0])
        del fresh
    return shape, plain.nbytes, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mount", help="an existing mount directory (default: start a private one)")
    ap.add_argument("--mib", type=int, default=512, help="image size in MiB (default 512)")
    ap.add_argument("--runs", type=int, default=5, help="runs per method (default 5, at least 3)")
    ap.add_argument("--order", choices="FC", default="F", help="memory order of the ordinary array")
    args = ap.parse_args()
    args.runs = max(3, args.runs)

    private = None
    if args.mount:
        mount = imgfs.Mount(args.mount)
    else:
        private = tempfile.mkdtemp(prefix="imgfs-bench-")
        mount = imgfs.Mount(os.path.join(private, "mnt"))
    try:
        shape, nbytes, t = run(mount, args)
    finally:
        mount.close()
        if private:
            os.rmdir(os.path.join(private, "mnt"))
            os.rmdir(private)

    med = {k: statistics.median(v) for k, v in t.items()}
    save = med["save"]

    def row(label, key, ratio=True):
        runs = " ".join(f"{x:.3f}" for x in t[key])
        r = f"{save / med[key]:>7.1f}x" if ratio else " " * 8
        print(f"{label:<44}{med[key]:>9.3f} {r}   {runs}")

    print(f"image: {shape} float32, {nbytes / 2**20:.0f} MiB; ordinary array in {args.order} order; "
          f"median of {args.runs}")
    print(f"{'method':<44}{'median s':>9} {'vs save':>8}   runs")
    row("nib.save to /dev/shm", "save")
    row(f"as_filename, ordinary array (copy route)", "copy")
    row("as_filename, imgfs.empty array (zero-copy)", "zero")
    print(f"target: as_filename >= 3.0x faster than nib.save "
          f"(copy route {save / med['copy']:.1f}x, zero-copy route {save / med['zero']:.1f}x)")
    print("not in the ratios (where the zero-copy route's costs go instead):")
    row("  first fill of a new numpy array", "fill_np", ratio=False)
    row("  first fill of a new imgfs.empty array", "fill_shm", ratio=False)
    row("  first rewrite of it after the handoff (COW)", "cow", ratio=False)


if __name__ == "__main__":
    main()
