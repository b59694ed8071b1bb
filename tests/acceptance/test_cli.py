"""The command line as a user meets it: FUSE conventions, help, logs, progress, errors, exit
statuses and --json, through the real binary and real mounts."""
import errno
import json
import os
import shutil
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
    """A .nii.gz whose header and trailer read but whose data stream is corrupt midway."""
    import gzip
    import nibabel as nib
    import numpy as np
    d = tmp_path_factory.mktemp("brokengz")
    plain = d / "p.nii"
    rng = np.random.default_rng(5)
    nib.save(nib.Nifti1Image(rng.normal(size=(64, 64, 64)).astype(np.float32), np.eye(4)),
             str(plain))
    packed = bytearray(gzip.compress(plain.read_bytes()))
    middle = len(packed) // 2
    packed[middle:middle + 64] = bytes(64)
    path = d / "corrupt.nii.gz"
    path.write_bytes(bytes(packed))
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


def wait_for(predicate, what, seconds=30):
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def socket_of(path):
    from imgfs._control import socket_path
    return socket_path(str(path))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_foreground_mount_takes_f_and_o_and_a_signal_unmounts_it_cleanly(tmp_path, sig):
    path = str(tmp_path / "fg")
    proc = subprocess.Popen([helpers.imgfs_bin(), "mount", "-f", "-o", "ro,no_passthrough",
                             path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: path in mount_points() and os.path.exists(socket_of(path)), "mount")
        added = imgfs("add", f"a={ANAT}", "--mount", path)
        assert added.returncode == 0, describe(added)
        with open(os.path.join(path, "a.nii"), "rb") as f, open(ANAT, "rb") as g:
            assert f.read() == g.read()
        stats = json.loads(imgfs("stats", "--json", "--mount", path).stdout)
        # -o no_passthrough took effect: the clean file was forwarded, not passed through.
        assert stats["passthrough_opens"] == 0 and stats["forwarded_reads"] > 0, stats
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            imgfs("unmount", path)
    assert proc.returncode == 0, err
    assert f"mounted at {path}" in err and "logging to stderr" in err, err
    assert path not in mount_points()
    assert not os.path.exists(socket_of(path))
    assert "Not Implemented" not in err and "WARN" not in err, err


def test_an_unknown_mount_option_is_refused_by_name(tmp_path):
    path = str(tmp_path / "opt")
    proc = imgfs("mount", "-o", "allow_other,bogus", path)
    assert proc.returncode != 0
    assert "unknown mount option 'bogus'" in proc.stderr, proc.stderr
    assert "allow_other, ro, rw, debug, no_passthrough" in proc.stderr, proc.stderr
    assert path not in mount_points()


def test_a_background_start_that_never_becomes_ready_times_out_clearly(tmp_path):
    path = str(tmp_path / "hang")
    env = dict(os.environ, IMGFS_TEST_HANG_BEFORE_READY="1")
    start = time.monotonic()
    proc = subprocess.run([helpers.imgfs_bin(), "mount", "--timeout", "1", path],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, describe(proc)
    assert f"the mount daemon for {path} did not become ready within 1 s" in proc.stderr, \
        proc.stderr
    assert time.monotonic() - start < 30
    assert path not in mount_points()
    left = subprocess.run(["pgrep", "-f", f"imgfs mount {path}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a daemon was left running"


def test_unmount_takes_the_mount_as_an_argument_or_with_mount(tmp_path):
    # An argument wins over $IMGFS_MOUNT, as scripts/demo relies on.
    env = dict(os.environ, IMGFS_MOUNT=str(tmp_path / "elsewhere"))
    for how in (["--mount"], []):
        path = str(tmp_path / f"u{len(how)}")
        proc = imgfs("mount", path)
        assert proc.returncode == 0, describe(proc)
        proc = subprocess.run([helpers.imgfs_bin(), "unmount", *how, path], capture_output=True,
                              text=True, env=env, timeout=60)
        assert proc.returncode == 0, describe(proc)
        assert path not in mount_points()


VERBS = ["info", "convert", "mount", "unmount", "add", "ls", "show", "set", "path", "mark", "rm",
         "save", "stats", "run"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_an_example_and_every_option_a_description(verb):
    import re
    proc = imgfs(verb, "--help")
    assert proc.returncode == 0, describe(proc)
    text = proc.stdout
    assert "Example" in text, text
    # clap puts a description after each argument or option; a bare one ends its line.
    bare = [line for line in text.splitlines()
            if re.fullmatch(r"\s+(-\w, )?(--?[\w-]+|<[^>]+>|\[[^\]]+\])( <[^>]+>)?\s*", line)
            and "-h, --help" not in line]
    assert not bare, bare
    if verb not in ("info", "convert", "mount", "run"):
        assert "[env: IMGFS_MOUNT" in text, text


def test_the_top_help_ends_with_a_recipe_and_names_rust_log():
    proc = imgfs("--help")
    assert proc.returncode == 0
    assert "Recipe:" in proc.stdout and "RUST_LOG" in proc.stdout
    assert proc.stdout.rstrip().endswith("RUST_LOG=debug."), proc.stdout[-300:]
    mount_help = imgfs("mount", "--help").stdout
    assert "[default: 30]" in mount_help and "$XDG_RUNTIME_DIR/imgfs" in mount_help


def test_a_background_mount_says_where_it_logs_and_ordinary_use_logs_no_warning(tmp_path):
    path = str(tmp_path / "logged")
    proc = imgfs("mount", path)
    assert proc.returncode == 0, describe(proc)
    log = proc.stderr.split("its log: ")[-1].strip()
    try:
        assert os.path.isfile(log), proc.stderr
        assert imgfs("add", f"a={ANAT}", "--mount", path).returncode == 0
        assert imgfs("set", "a", "descrip=x", "--mount", path).returncode == 0
        served = os.path.join(path, "a.nii")
        # What ordinary tools do: stat, xattrs (ls -l), isatty, cp (SEEK_DATA,
        # copy_file_range), access, flush on close.
        subprocess.run(["ls", "-l", path], check=True, capture_output=True)
        subprocess.run(["cp", served, str(tmp_path / "copy.nii")], check=True)
        with open(served, "rb") as f:
            f.isatty()
            os.lseek(f.fileno(), 0, os.SEEK_END)
        assert os.access(served, os.R_OK) and not os.access(served, os.X_OK)
        with pytest.raises(OSError):
            os.getxattr(served, "user.nothing")
        # No extended attributes: the kernel, told once, answers "not supported" itself.
        with pytest.raises(OSError) as no_xattrs:
            os.listxattr(served)
        assert no_xattrs.value.errno == errno.EOPNOTSUPP
        with open(log) as f:
            text = f.read()
        assert "WARN" not in text and "Not Implemented" not in text, text
    finally:
        imgfs("unmount", path)
    assert not os.path.exists(log), "a cleanly stopped mount left its log"


def test_log_file_and_debug(tmp_path):
    path = str(tmp_path / "dbg")
    log = str(tmp_path / "imgfs.log")
    proc = subprocess.Popen([helpers.imgfs_bin(), "mount", "-d", "--log-file", log, path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: path in mount_points() and os.path.exists(socket_of(path)), "mount")
        assert imgfs("add", f"a={ANAT}", "--mount", path).returncode == 0
        os.stat(os.path.join(path, "a.nii"))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"logging to {log}" in err, err
    with open(log) as f:
        text = f.read()
    assert "DEBUG" in text, text


def test_with_no_mount_the_error_says_how_to_start_one_and_names_no_os_error_twice(tmp_path):
    path = str(tmp_path / "nothing")
    proc = imgfs("ls", "--mount", path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"imgfs: no imgfs mount at {path}; start one with "
                                   f"`imgfs mount {path}`"), proc.stderr
    env = dict(os.environ, IMGFS_MOUNT=path)
    proc = subprocess.run([helpers.imgfs_bin(), "path", "x"], capture_output=True, text=True,
                          env=env)
    assert f"no imgfs mount at {path}; start one" in proc.stderr, proc.stderr


def test_set_reports_the_fields_changed_and_labels_consequences(mnt):
    assert imgfs("add", f"s={ANAT}", "--mount", mnt).returncode == 0
    try:
        proc = imgfs("set", "s", "descrip=hello", "datatype=float32", "--mount", mnt)
        assert proc.returncode == 0, describe(proc)
        lines = proc.stdout.splitlines()
        assert lines[0] == "descrip=hello"
        assert lines[1] == "datatype=16"
        assert "bitpix=32\t(changed as a consequence)" in lines, lines
        assert lines[-1].startswith("dirty:"), lines
        bad = imgfs("set", "s", "srow_x=1,2", "--mount", mnt)
        assert bad.returncode == 1
        assert "field 'srow_x' takes 4 values, got '1,2'" in bad.stderr, bad.stderr
        assert "Floats" not in bad.stderr
    finally:
        imgfs("rm", "s", "--mount", mnt)


def test_json_on_every_verb_that_prints(mnt, tmp_path):
    def j(*args):
        proc = imgfs(*args, "--json", "--mount", mnt)
        assert proc.returncode == 0, describe(proc)
        return json.loads(proc.stdout)
    added = j("add", f"jj={ANAT}")
    assert [a["name"] for a in added] == ["jj"] and added[0]["origin"] == ANAT
    try:
        assert j("path", "jj") == {"path": ANAT}
        changed = j("set", "jj", "descrip=json")
        assert changed["changed"] == [{"field": "descrip", "value": "json"}]
        assert changed["clean"] is False and "ok" not in changed
        marked = j("mark", "jj", "clean")
        assert marked["state"] == "clean" and marked["name"] == "jj"
        out = str(tmp_path / "jj.nii.gz")
        assert j("save", "jj", out) == {"path": out}
        assert os.path.getsize(out) > 0
        stats = j("stats")
        assert stats["images"] >= 1 and "rendered_reads" in stats
        assert "jj" in [i["name"] for i in j("ls")]
        text = imgfs("stats", "--mount", mnt).stdout
        assert not text.lstrip().startswith("{") and "passthrough_opens" in text
    finally:
        imgfs("rm", "jj", "--mount", mnt)


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    """64 MiB of float32: a save long enough to report progress several times."""
    import nibabel as nib
    import numpy as np
    path = str(tmp_path_factory.mktemp("big") / "big.nii")
    data = np.arange(256 * 256 * 256, dtype=np.float32).reshape(256, 256, 256, order="F")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_save_with_progress_sends_progress_lines_then_the_answer_last(mnt, big_image, tmp_path):
    raw = Raw(mnt)
    try:
        assert raw.ask(op="add", path=big_image, name="big")["ok"] is True
        raw.ask(op="set", name="big", fields=[["descrip", "rendered"]])
        out = str(tmp_path / "big_out.nii")
        raw.send(json.dumps({"op": "save", "name": "big", "out": out, "progress": True}))
        lines = raw.lines()
        total = 256 ** 3 * 4
        progress = [line["progress"] for line in lines[:-1]]
        assert lines[-1] == {"ok": True, "path": out}
        assert all(set(line) == {"progress"} for line in lines[:-1]), lines[:3]
        assert len(progress) >= 10
        assert progress[0] == {"done": 0, "total": total}
        assert progress[-1] == {"done": total, "total": total}
        assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
        # Without the field: the answer alone.
        raw.send(json.dumps({"op": "save", "name": "big", "out": out}))
        assert raw.lines() == [{"ok": True, "path": out}]
    finally:
        raw.ask(op="rm", name="big")
        raw.close()


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
def test_a_datatype_change_sends_progress_of_its_pass_then_the_answer(mnt, big_image, tmp_path,
                                                                        compressed):
    """The value-range pass of `set datatype=` (one pass over the original, the long part on a
    large or compressed image) reports its progress, in order, before the answer."""
    path = big_image
    if compressed:
        import gzip
        path = str(tmp_path / "big.nii.gz")
        with open(big_image, "rb") as f, gzip.open(path, "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g)
    raw = Raw(mnt)
    try:
        assert raw.ask(op="add", path=path, name="conv")["ok"] is True
        raw.send(json.dumps({"op": "set", "name": "conv", "fields": [["datatype", "int16"]],
                             "progress": True}))
        lines = raw.lines()
        total = 256 ** 3 * 4
        progress = [line["progress"] for line in lines[:-1]]
        assert lines[-1]["ok"] is True and lines[-1]["dtype"] == "int16", lines[-1]
        assert len(progress) >= 10, progress
        assert progress[0] == {"done": 0, "total": total}
        assert progress[-1] == {"done": total, "total": total}
        assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
        # A set that changes no datatype, or asks for none: the answer alone.
        raw.send(json.dumps({"op": "set", "name": "conv", "fields": [["descrip", "x"]],
                             "progress": True}))
        only = raw.lines()
        assert len(only) == 1 and only[0]["ok"] is True, only
    finally:
        raw.ask(op="rm", name="conv")
        raw.close()


def test_save_shows_progress_on_a_terminal_only(mnt, big_image, tmp_path):
    import pty
    assert imgfs("add", f"bigcli={big_image}", "--mount", mnt).returncode == 0
    try:
        imgfs("set", "bigcli", "descrip=x", "--mount", mnt)
        out = str(tmp_path / "o.nii")
        # Not a terminal: nothing on stderr; with --json, nothing either.
        for extra in ([], ["--json"]):
            proc = imgfs("save", "bigcli", out, *extra, "--mount", mnt)
            assert proc.returncode == 0, describe(proc)
            assert proc.stderr == "", proc.stderr
        # A terminal on stderr: a bar that ends at 100%.
        master, slave = pty.openpty()
        proc = subprocess.Popen([helpers.imgfs_bin(), "save", "bigcli", out, "--mount", mnt],
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        os.close(master)
        assert proc.wait(timeout=60) == 0
        text = seen.decode(errors="replace")
        assert "saving bigcli" in text and "100%" in text, text
    finally:
        imgfs("rm", "bigcli", "--mount", mnt)
