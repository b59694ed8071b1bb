"""Mounts by an ordinary user with Debian's stock /etc/fuse.conf, and mount points or logs in
/tmp planted by another user.

The user is uid 65534, run with setpriv inside a private mount namespace where a 0666 node is
bound over /dev/fuse (as a member of a `fuse` group could open it); nothing machine-wide
changes. These tests start as root, so root can also act as "another user" of the mount.
"""
import os
import shutil
import subprocess
import tempfile

import pytest

import helpers
from helpers import describe, imgfs

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


@pytest.fixture
def stage():
    """A root-owned 0755 directory every user can enter, holding the binary, a 0666 FUSE node
    and a home for the user: the checkout itself may be where uid 65534 cannot go."""
    d = tempfile.mkdtemp(prefix="imgfs-unpriv-")
    os.chmod(d, 0o755)
    shutil.copy(helpers.imgfs_bin(), os.path.join(d, "imgfs"))
    os.chmod(os.path.join(d, "imgfs"), 0o755)
    os.mknod(os.path.join(d, "fuse"), 0o666 | 0o020000, os.makedev(10, 229))
    os.chmod(os.path.join(d, "fuse"), 0o666)
    for sub in ("home", "xdg", "m"):
        os.mkdir(os.path.join(d, sub), 0o700)
        os.chown(os.path.join(d, sub), NOBODY, NOBODY)
    src = os.path.join(d, "f.nii")
    shutil.copyfile(os.path.join(helpers.NIB_DATA, "functional.nii"), src)
    os.chmod(src, 0o644)
    with open(os.path.join(d, "fuse.conf"), "w") as f:
        f.write("user_allow_other\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def in_namespace(stage, script, timeout=120):
    """Runs `script` (bash) as root in a private mount namespace; `$U cmd` runs cmd as the
    user. Every mount made there ends with the namespace. (Python readers as the user are
    covered by scripts/test's unprivileged step, which runs the mount tests as that user.)"""
    prelude = f"""
set -u
mount --bind {stage}/fuse /dev/fuse
D={stage}
U="setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups env HOME=$D/home XDG_RUNTIME_DIR=$D/xdg PATH=/usr/bin:/bin"
wait_unmounted() {{ for i in $(seq 100); do grep -q " $1 " /proc/self/mountinfo || return 0; sleep 0.05; done; return 1; }}
"""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c",
                           prelude + script], capture_output=True, text=True, timeout=timeout)


def test_an_ordinary_user_mounts_reads_alone_and_kill_9_unmounts(stage):
    size = os.path.getsize(os.path.join(stage, "f.nii"))
    proc = in_namespace(stage, """
$U $D/imgfs mount $D/m || { echo "MOUNT FAILED"; exit 1; }
grep " $D/m " /proc/self/mountinfo
$U $D/imgfs add --mount $D/m x=$D/f.nii
echo "nifti_tool: $($U nifti_tool -check_hdr -infiles $D/m/x.nii 2>&1 | grep -o 'header IS GOOD')"
echo "user size: $($U wc -c $D/m/x.nii | cut -d' ' -f1)"
echo "root stat: $(stat $D/m/x.nii 2>&1)"
$U kill -9 $(pgrep -u 65534 -x imgfs)
wait_unmounted $D/m && echo "after kill: unmounted" || echo "after kill: still mounted"
$U $D/imgfs mount $D/m && echo "remount: ok"
$U $D/imgfs unmount $D/m
wait_unmounted $D/m && echo "end: unmounted"
""")
    out = proc.stdout
    assert "MOUNT FAILED" not in out, describe(proc)
    assert "user_id=65534" in out and "allow_other" not in out, describe(proc)
    assert "nifti_tool: header IS GOOD" in out, describe(proc)
    assert f"user size: {size}" in out, describe(proc)
    # The kernel's own check: without allow_other even root is refused.
    assert "root stat: " in out and "Permission denied" in out, describe(proc)
    assert "after kill: unmounted" in out, describe(proc)
    assert "remount: ok" in out and "end: unmounted" in out, describe(proc)


def test_allow_other_is_refused_by_the_stock_fuse_conf_and_works_where_allowed(stage):
    proc = in_namespace(stage, """
echo "stock: $($U $D/imgfs mount $D/m --allow-other 2>&1; echo rc=$?)"
mount --bind $D/fuse.conf /etc/fuse.conf
$U $D/imgfs mount $D/m --allow-other && echo "allowed: mounted"
$U $D/imgfs add --mount $D/m x=$D/f.nii
echo "root size: $(wc -c < $D/m/x.nii)"
$U $D/imgfs unmount $D/m
wait_unmounted $D/m && echo "end: unmounted"
""")
    out = proc.stdout
    assert "rc=1" in out and "user_allow_other" in out and f"{stage}/m" in out, describe(proc)
    assert "allowed: mounted" in out, describe(proc)
    assert f"root size: {os.path.getsize(os.path.join(stage, 'f.nii'))}" in out, describe(proc)
    assert "end: unmounted" in out, describe(proc)


def test_a_planted_symlink_mount_point_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tmp_path / "L"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    proc = imgfs("mount", str(link))
    assert proc.returncode == 1, describe(proc)
    assert str(link) in proc.stderr and "symbolic link" in proc.stderr, describe(proc)
    # Through a planted symlink higher up, too.
    proc = imgfs("mount", str(link / "sub"))
    assert proc.returncode == 1, describe(proc)
    assert str(link) in proc.stderr and "symbolic link owned by uid 65534" in proc.stderr
    assert not (victim / "sub").exists()
    with open("/proc/self/mountinfo") as f:
        assert str(victim) not in f.read()


def test_a_mount_point_owned_by_another_user_is_refused(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    proc = imgfs("mount", str(d))
    assert proc.returncode == 1, describe(proc)
    assert str(d) in proc.stderr and "owned by uid 65534" in proc.stderr, describe(proc)


def _key(path):
    """The daemon's file name key for a mount directory (FNV-1a of its path)."""
    h = 0xcbf29ce484222325
    for b in os.fsencode(path):
        h = ((h ^ b) * 0x100000001b3) % (1 << 64)
    return f"{h:016x}"


def test_a_planted_symlink_log_is_not_followed(tmp_path):
    xdg = tmp_path / "xdg"
    control = xdg / "imgfs-control"
    control.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    mnt = tmp_path / "m"
    (control / f"{_key(str(mnt))}.log").symlink_to(victim)
    proc = subprocess.run([helpers.imgfs_bin(), "mount", str(mnt)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, XDG_RUNTIME_DIR=str(xdg)))
    assert proc.returncode == 1, describe(proc)
    assert f"{_key(str(mnt))}.log" in proc.stderr and "symbolic link" in proc.stderr
    assert victim.read_text() == "precious\n"
    with open("/proc/self/mountinfo") as f:
        assert str(mnt) not in f.read()
