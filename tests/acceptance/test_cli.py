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
