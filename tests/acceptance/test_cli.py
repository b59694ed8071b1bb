"""The command line as a user meets it: FUSE conventions, help, logs, progress, errors, exit
statuses and --json, through the real binary and real mounts."""
import json
import os
import signal
import subprocess
import time

import pytest

import helpers
from helpers import describe, imgfs

ANAT = os.path.join(helpers.NIB_DATA, "anatomical.nii")


def mount_points():
    """The mount points in the kernel's table, decoded as the kernel escapes them."""
    def decode(field):
        out, i = bytearray(), 0
        raw = field.encode()
        while i < len(raw):
            if raw[i:i + 1] == b"\\" and len(raw) >= i + 4:
                out.append(int(raw[i + 1:i + 4], 8))
                i += 4
            else:
                out.append(raw[i])
                i += 1
        return out.decode()
    with open("/proc/self/mountinfo") as f:
        return [decode(line.split(" ")[4]) for line in f]


def test_a_mount_point_with_a_backslash_space_and_tab_is_seen_as_mounted(tmp_path):
    path = str(tmp_path / "back\\slash sp\tab")
    proc = imgfs("mount", path)
    assert proc.returncode == 0, describe(proc)
    try:
        assert mount_points().count(path) == 1
        again = imgfs("mount", path)
        assert again.returncode == 1, describe(again)
        assert "already a mount point" in again.stderr, again.stderr
        assert mount_points().count(path) == 1
        added = imgfs("add", f"a={ANAT}", "--mount", path)
        assert added.returncode == 0, describe(added)
    finally:
        proc = imgfs("unmount", path)
    assert proc.returncode == 0, describe(proc)
    assert path not in mount_points()


def run_dirs():
    d = "/tmp/imgfs-control-%d" % os.getuid()
    return {n for n in os.listdir(d) if n.startswith("run-")} if os.path.isdir(d) else set()


@pytest.mark.parametrize("command, status, message", [
    (["sh", "-c", "exit 7"], 7, None),
    (["sh", "-c", 'kill -TERM $$'], 128 + signal.SIGTERM, None),
    (["sh", "-c", 'kill -KILL $$'], 128 + signal.SIGKILL, None),
    (["no-such-command-xyz"], 127, "no-such-command-xyz: command not found"),
    (["{plain}"], 126, "plain.txt: cannot execute"),
    (["{garbage}"], 126, "garbage: cannot execute"),
])
def test_run_exits_as_a_shell_does_and_leaves_no_directory(tmp_path, command, status, message):
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF\x00\x00garbage")
    garbage.chmod(0o755)
    command = [c.format(plain=plain, garbage=garbage) for c in command]
    before = run_dirs()
    proc = subprocess.run([helpers.imgfs_bin(), "run", "--", *command], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == status, describe(proc)
    if message:
        assert message in proc.stderr, proc.stderr
    assert run_dirs() == before
    assert not [p for p in mount_points() if "/run-" in p]


def test_run_passes_a_sigterm_on_to_the_command_and_cleans_up():
    before = run_dirs()
    proc = subprocess.Popen([helpers.imgfs_bin(), "run", "--", "sleep", "30"],
                            stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if run_dirs() - before and any("/run-" in p for p in mount_points()):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM, proc.stderr.read()
    assert run_dirs() == before


class Raw:
    """A bare connection to a mount's control socket: lines in, parsed lines out."""

    def __init__(self, mount_dir):
        import socket as socketlib
        from imgfs._control import socket_path
        self.sock = socketlib.socket(socketlib.AF_UNIX)
        self.sock.connect(socket_path(str(mount_dir)))
        self.reader = self.sock.makefile("rb")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def lines(self):
        """Every line up to and including the final answer (the one with `ok`)."""
        out = []
        while True:
            line = self.reader.readline()
            assert line, f"connection closed after {out}"
            out.append(json.loads(line))
            if "ok" in out[-1]:
                return out

    def ask(self, **request):
        self.send(json.dumps(request))
        return self.lines()[-1]

    def close(self):
        self.reader.close()
        self.sock.close()


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    path = tmp_path_factory.mktemp("climnt") / "m"
    proc = imgfs("mount", path)
    assert proc.returncode == 0, describe(proc)
    yield str(path)
    imgfs("unmount", path)


@pytest.fixture(scope="module")
def broken_gz(tmp_path_factory):
    """A .nii.gz whose header reads but whose data stream is cut short."""
    import gzip
    import nibabel as nib
    import numpy as np
    d = tmp_path_factory.mktemp("brokengz")
    plain = d / "p.nii"
    nib.save(nib.Nifti1Image(np.arange(64 ** 3, dtype=np.float32).reshape(64, 64, 64),
                             np.eye(4)), str(plain))
    packed = gzip.compress(plain.read_bytes())
    path = d / "cut.nii.gz"
    path.write_bytes(packed[:len(packed) // 3])
    return str(path)


def test_every_error_answer_carries_its_kind(mnt, tmp_path, broken_gz):
    raw = Raw(mnt)
    try:
        assert raw.ask(op="add", path=ANAT, name="k")["ok"] is True
        truncated = os.path.join(helpers.REPO, "tests", "data", "malformed",
                                 "truncated_data.nii")
        cases = [
            ({"op": "nosuch"}, "bad_request"),
            ({"op": "add", "path": ANAT, "bogus": 1}, "bad_request"),
            ({"op": "add", "path": "relative.nii"}, "bad_request"),
            ({"op": "mark", "name": "k", "state": "maybe"}, "bad_request"),
            ({"op": "add", "path": ANAT, "name": "../x"}, "bad_name"),
            ({"op": "path", "name": "nosuch"}, "unknown_name"),
            ({"op": "add", "path": ANAT, "name": "k"}, "name_taken"),
            ({"op": "set", "name": "k", "fields": [["nosuchfield", 1]]}, "refused"),
            ({"op": "set", "name": "k", "fields": [["dim", [3, 1, 1, 1, 1, 1, 1, 1]]]},
             "refused"),
            ({"op": "add", "path": truncated, "name": "t"}, "bad_file"),
            ({"op": "add", "path": "/nonexistent/x.nii", "name": "t"}, "bad_file"),
            ({"op": "save", "name": "k", "out": "/nonexistent/dir/x.nii"}, "io"),
        ]
        for request, kind in cases:
            answer = raw.ask(**request)
            assert answer["ok"] is False, (request, answer)
            assert answer["kind"] == kind, (request, answer)
            assert answer["error"], (request, answer)
        assert raw.ask(op="add", path=broken_gz, name="cut")["ok"] is True
        raw.ask(op="set", name="cut", fields=[["datatype", "int16"]])
        answer = raw.ask(op="path", name="cut")
        assert (answer["ok"], answer.get("kind")) == (False, "unavailable"), answer
        assert raw.ask(op="ping")["ok"] is True
    finally:
        raw.ask(op="rm", name="k")
        raw.ask(op="rm", name="cut")
        raw.close()
