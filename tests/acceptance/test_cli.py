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
