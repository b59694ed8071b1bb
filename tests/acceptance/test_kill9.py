"""Fault test: the daemon is killed with SIGKILL while 8 reader processes are mid-read. No
reader may hang, the mount must go away on its own, and a new mount at the same place works."""
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import nibabel as nib
import numpy as np

import helpers
from helpers import describe, imgfs

# Reads the file whole, again and again, until something fails; says "reading" once the
# first bytes have arrived, and how it ended.
READER = textwrap.dedent("""
    import mmap, os, sys
    path, mode = sys.argv[1], sys.argv[2]
    said = False
    try:
        while True:
            with open(path, "rb") as f:
                if mode == "mmap":
                    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                    for off in range(0, len(m), 4096):
                        m[off]
                        if not said:
                            print("reading", flush=True); said = True
                    m.close()
                else:
                    while f.read(1 << 16):
                        if not said:
                            print("reading", flush=True); said = True
    except OSError as e:
        print("error", e.errno, flush=True)
""")


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


def test_kill_9_with_8_readers_mid_read(tmp_path):
    mnt = str(tmp_path / "mnt")
    ok(imgfs("mount", mnt))
    try:
        big = str(tmp_path / "big.nii")
        data = np.arange(64 * 64 * 64 * 16, dtype=np.float32).reshape(64, 64, 64, 16) % 1000
        nib.save(nib.Nifti1Image(data, np.eye(4)), big)
        ok(imgfs("add", "--mount", mnt, f"conv={big}", f"plain={big}"))
        ok(imgfs("set", "--mount", mnt, "conv", "datatype=int16"))  # rendered by the daemon
        pid = helpers.daemon_pid(mnt)
        # 6 readers of the rendered file (3 read, 3 mmap), 2 of the passthrough one
        plan = [("conv", "read")] * 3 + [("conv", "mmap")] * 3 + [("plain", "read"),
                                                                  ("plain", "mmap")]
        readers = [subprocess.Popen([sys.executable, "-c", READER,
                                     os.path.join(mnt, f"{n}.nii"), mode],
                                    stdout=subprocess.PIPE, text=True) for n, mode in plan]
        deadline = time.monotonic() + 60
        for r in readers:
            ready, _, _ = select.select([r.stdout], [], [], max(0, deadline - time.monotonic()))
            assert ready and r.stdout.readline().strip() == "reading", "a reader never started"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        for (name, mode), r in zip(plan, readers):
            try:
                r.wait(timeout=max(0.1, killed + 10 - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other in readers:
                    other.kill()
                raise AssertionError(f"a {mode} reader of {name} hung after the daemon died")
            out = r.stdout.read().strip()
            # read() gets an errno; touching a mapping whose file is gone is SIGBUS
            assert out.startswith("error") or r.returncode == -signal.SIGBUS, \
                f"{mode} reader of {name}: exit {r.returncode}, said {out!r}"
        for _ in range(100):
            if not is_mounted(mnt):
                break
            time.sleep(0.05)
        assert not is_mounted(mnt), "the mount outlived its daemon"

        ok(imgfs("mount", mnt))
        ok(imgfs("add", "--mount", mnt, f"again={big}"))
        ok(imgfs("set", "--mount", mnt, "again", "descrip=after the crash"))
        again = nib.load(os.path.join(mnt, "again.nii"))
        assert again.header["descrip"] == b"after the crash"
        assert np.array_equal(again.get_fdata(), data)
    finally:
        if is_mounted(mnt):
            imgfs("unmount", mnt)
    assert not is_mounted(mnt)
