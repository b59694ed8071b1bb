"""One mount per node and user: processes that need the default mount at the same moment
share the one the first of them starts, and the last one out unmounts it."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import imgfs_testlib  # noqa: F401 (puts the tree's imgfs on sys.path when not installed)

PROG = textwrap.dedent("""
    import sys, numpy as np, nibabel as nib, imgfs
    i = int(sys.argv[1])
    sys.stdin.readline()                      # all start together
    img = nib.Nifti1Image(np.full((3, 2, 2), i, np.float32), np.eye(4))
    path = imgfs.as_filename(img)             # the default mount, started if needed
    ok = bool((nib.load(path).get_fdata() == i).all())
    with imgfs.Mount() as m:
        print(path, ok, m.ping()["pid"], flush=True)
    sys.stdin.readline()                      # stay until every one has answered
""")


def _mounts_of(path):
    with open("/proc/mounts") as f:
        return [line for line in f if line.split()[1] == path]


def test_ten_processes_start_the_default_mount_at_once():
    run = tempfile.mkdtemp(prefix="imgfs-run-")  # short: the control socket's path must fit
    env = {k: v for k, v in os.environ.items() if k != "IMGFS_MOUNT"}
    env["XDG_RUNTIME_DIR"] = str(run)
    default = os.path.join(run, "imgfs")
    procs = [
        subprocess.Popen([sys.executable, "-c", PROG, str(i)], env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(10)
    ]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = [p.stdout.readline().split() for p in procs]
        assert all(len(a) == 3 for a in answers), [
            (a, p.stderr.read() if not a else "") for a, p in zip(answers, procs)
        ]
        assert len({a[0] for a in answers}) == 10
        assert all(os.path.dirname(a[0]) == default and a[1] == "True" for a in answers), answers
        assert len({a[2] for a in answers}) == 1, "more than one daemon answered"
        assert len(_mounts_of(default)) == 1
    finally:
        for p in procs:
            out, err = p.communicate("done\n", timeout=120)
            assert p.returncode == 0, err
    # the last process to let go of the mount a client started unmounts it
    assert _mounts_of(default) == []
    shutil.rmtree(run)
