#!/usr/bin/env python3
"""How much faster is handing an in-memory image to a tool through imgfs than saving it?

Times `imgfs.as_filename` of a new 512 MiB float32 4D image (a memfd handed to the daemon) against
`nib.save` of the same image to /dev/shm (the fastest place a temporary file could go), median of
3 runs each, and prints both with their ratio. Target: the handoff at least 3x faster. Reports
only: timing on a shared machine is too noisy to assert.

    python scripts/bench_handoff.py [--mount DIR] [--mib 512] [--runs 3] [--order F|C]

Both sides make exactly one copy of a Fortran-ordered array into tmpfs, so the ratio there is
bounded by how cheaply each gets the bytes into shared memory; `--order C` (an array fresh from
numpy arithmetic) shows the case where nib.save pays for reordering in small chunks.
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


def make_data(mib, order="F"):
    """A float32 4D array of about `mib` MiB, by default in Fortran (file) order, the layout
    nibabel loads and saves fastest, so neither side pays for a transpose."""
    nx, ny, nz = 128, 128, 64
    nt = max(1, mib * 2**20 // (nx * ny * nz * 4))
    data = np.empty((nx, ny, nz, nt), dtype=np.float32, order=order)
    flat = data.reshape(-1, order=order)  # a view: same memory
    flat[:] = np.arange(flat.size, dtype=np.float32) % 1000
    return data


def time_handoff(mount, data, affine):
    img = nib.Nifti1Image(data, affine)
    start = time.perf_counter()
    path = imgfs.as_filename(img, mount)
    elapsed = time.perf_counter() - start
    assert os.path.dirname(path) == mount.dir, path
    mount.rm(os.path.basename(path)[: -len(".nii")])  # frees the daemon's copy before the next run
    return elapsed


def time_save(data, affine):
    img = nib.Nifti1Image(data, affine)
    fd, path = tempfile.mkstemp(suffix=".nii", dir="/dev/shm")
    os.close(fd)
    try:
        start = time.perf_counter()
        nib.save(img, path)
        return time.perf_counter() - start
    finally:
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mount", help="an existing mount directory (default: start a private one)")
    ap.add_argument("--mib", type=int, default=512, help="image size in MiB (default 512)")
    ap.add_argument("--runs", type=int, default=3, help="runs per method (default 3)")
    ap.add_argument("--order", choices="FC", default="F", help="memory order of the array (default F)")
    args = ap.parse_args()

    data = make_data(args.mib, args.order)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    private = None
    if args.mount:
        mount = imgfs.Mount(args.mount)
    else:
        private = tempfile.mkdtemp(prefix="imgfs-bench-")
        mount = imgfs.Mount(os.path.join(private, "mnt"))
    try:
        handoff = [time_handoff(mount, data, affine) for _ in range(args.runs)]
        save = [time_save(data, affine) for _ in range(args.runs)]
    finally:
        mount.close()
        if private:
            os.rmdir(os.path.join(private, "mnt"))
            os.rmdir(private)

    h, s = statistics.median(handoff), statistics.median(save)
    print(f"image: {data.shape} float32, {data.nbytes / 2**20:.0f} MiB, {args.order} order")
    print(f"{'method':<34}{'median s':>10}   runs")
    print(f"{'imgfs.as_filename (memfd handoff)':<34}{h:>10.3f}   " + " ".join(f"{t:.3f}" for t in handoff))
    print(f"{'nib.save to /dev/shm':<34}{s:>10.3f}   " + " ".join(f"{t:.3f}" for t in save))
    print(f"ratio save/handoff: {s / h:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
