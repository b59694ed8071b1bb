"""Client abuse: no single request, connection or descriptor takes the mount down.

Each test does one bad thing to a real mount through its control socket or its files, checks
the answer names the problem, then checks the daemon is alive and another image still reads
byte for byte as its original (`assert_serving`).
"""
import base64
import errno
import fcntl
import json
import os
import resource
import socket
import threading
import time

import nibabel as nib
import numpy as np
import pytest

import imgfs
from imgfs._control import socket_path
from imgfs.mount import _fill
from imgfs.shm import new_memfd, seal_size

# FUSE reads of this image's file, and `show` of it, panic in a debug build of the daemon
# (src/fault.rs): the test of B6.
PANICKY = "panicky"


@pytest.fixture(scope="module")
def ref_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("abuse-src")
    data = np.arange(6 * 7 * 5, dtype=np.int16).reshape(6, 7, 5)
    path = str(d / "ref.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.fixture(scope="module")
def mount(tmp_path_factory, ref_file):
    os.environ["IMGFS_TEST_PANIC"] = PANICKY
    try:
        m = imgfs.Mount(tmp_path_factory.mktemp("abuse") / "mnt")
    finally:
        del os.environ["IMGFS_TEST_PANIC"]
    assert m.owned
    m.request("add", path=ref_file, name="ref")
    m.request("add", path=ref_file, name=PANICKY)
    # dirty, so that its reads reach the daemon instead of going through to the original
    m.request("set", name=PANICKY, fields=[["descrip", "rendered"]])
    yield m
    m.close()


def assert_serving(mount, ref_file):
    """The daemon answers, and the reference image reads exactly as its original."""
    assert mount.request("ping")["pid"] > 0
    with open(os.path.join(mount.dir, "ref.nii"), "rb") as served:
        got = served.read()
    with open(ref_file, "rb") as original:
        assert got == original.read()
    # a fresh connection is served too
    with imgfs.Mount(mount.dir) as again:
        assert not again.owned
        assert any(s["name"] == "ref" for s in again.ls())


def raw_exchange(mount, data, fds=()):
    """Send `data` (bytes, with `fds` attached) on a new connection; the answer line, parsed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(socket_path(mount.dir))
        try:
            sent = socket.send_fds(s, [data], list(fds)) if fds else 0
            s.sendall(data[sent:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # a daemon that refuses the connection answers and closes before reading
        with s.makefile("rb") as r:
            return json.loads(r.readline())


def put_fields(shape=(2, 2, 2), dtype="float32", **extra):
    h = nib.Nifti1Header()
    h.set_data_shape((2, 2, 2))  # the daemon takes the shape from `shape`
    return dict(header=base64.b64encode(h.binaryblock).decode(), affine=np.eye(4).tolist(),
                shape=list(shape), dtype=dtype, **extra)


def sealed_memfd(values):
    fd = new_memfd("abuse")
    _fill(fd, values)
    seal_size(fd)
    return fd


# -- malformed requests ------------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"{not json", b"[]", b'{"op":"no_such_op"}', b"\xff\xfe",
                                  b'{"op":"show"}', b'{"op":"ping","op":"ls"}'])
def test_malformed_json_is_refused_and_the_mount_serves_on(mount, ref_file, line):
    answer = raw_exchange(mount, line + b"\n")
    assert answer["ok"] is False
    assert answer["error"].startswith("bad request"), answer
    assert_serving(mount, ref_file)


@pytest.mark.parametrize("op", ["ping", "ls", "stats"])
def test_fieldless_ops_refuse_an_unknown_field_by_name(mount, ref_file, op):
    answer = raw_exchange(mount, json.dumps({"op": op, "verbose": True}).encode() + b"\n")
    assert answer["ok"] is False
    assert "unknown field `verbose`" in answer["error"], answer
    assert_serving(mount, ref_file)


def test_a_100_mb_line_is_refused_and_the_connection_closed(mount, ref_file):
    chunk = b"x" * (1 << 20)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(socket_path(mount.dir))

        def flood():
            try:
                for _ in range(100):
                    s.sendall(chunk)
            except OSError:  # the daemon closed the connection: expected
                pass

        sender = threading.Thread(target=flood)
        sender.start()
        with s.makefile("rb") as r:
            answer = json.loads(r.readline())
            # Then the daemon closes the connection: an end of file, or a reset when it closed
            # with flood bytes still unread in its receive queue.
            try:
                assert r.read() == b""
            except ConnectionResetError:
                pass
        sender.join()
    assert answer["ok"] is False
    assert "request line too long" in answer["error"]
    assert_serving(mount, ref_file)


def _threads_and_fds(pid):
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def test_10000_connections_neither_exhaust_the_daemon_nor_stop_it(mount, ref_file):
    pid = mount.request("ping")["pid"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 12000), max(hard, 12000)))
    held = []
    try:
        for _ in range(10_000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(s)
            s.connect(socket_path(mount.dir))
        threads, fds = _threads_and_fds(pid)
        # a connection thread and descriptor each for at most 256 of them, not 10,000
        assert threads < 400 and fds < 600, (threads, fds)
        refused = raw_exchange(mount, b'{"op":"ping"}\n')
        assert refused["ok"] is False
        assert "too many connections" in refused["error"]
        with held[-1].makefile("rb") as r:
            assert "too many connections" in json.loads(r.readline())["error"]
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # slots come back as the daemon's connection threads see their clients gone
    for _ in range(200):
        if raw_exchange(mount, b'{"op":"ping"}\n')["ok"]:
            break
        time.sleep(0.05)
    assert_serving(mount, ref_file)


# -- descriptors -------------------------------------------------------------------------------

def _regular_file(tmp_path):
    path = tmp_path / "plain.bin"
    path.write_bytes(b"\0" * 64)
    return [os.open(path, os.O_RDONLY)], "not a memfd"


def _directory(tmp_path):
    return [os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)], "is a directory"


def _pipe(tmp_path):
    r, w = os.pipe()
    os.close(w)
    return [r], "is a pipe"


def _socket(tmp_path):
    a, b = socket.socketpair()
    b.close()
    return [a.detach()], "is a socket"


def _none(tmp_path):
    return [], "file descriptor"


def _unsealed_memfd(tmp_path):
    fd = os.memfd_create("abuse", os.MFD_ALLOW_SEALING)
    _fill(fd, np.ones((2, 2, 2), np.float32))
    return [fd], "not sealed against shrinking"


def _memfd_without_sealing(tmp_path):
    fd = os.memfd_create("abuse")  # F_SEAL_SEAL from the start: can never be sealed
    _fill(fd, np.ones((2, 2, 2), np.float32))
    return [fd], "not sealed against shrinking"


@pytest.mark.parametrize("make", [_regular_file, _directory, _pipe, _socket, _none,
                                  _unsealed_memfd, _memfd_without_sealing],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_put_with_a_bad_descriptor_is_refused_by_name(mount, ref_file, tmp_path, make):
    fds, expected = make(tmp_path)
    try:
        with pytest.raises(imgfs.ImgfsError, match=expected):
            mount.request("put", fds=fds, name="bad_fd", **put_fields())
    finally:
        for fd in fds:
            os.close(fd)
    assert "bad_fd" not in [s["name"] for s in mount.ls()]
    assert_serving(mount, ref_file)


def test_a_put_with_several_descriptors_uses_the_first_and_closes_the_rest(mount, ref_file):
    fds = [sealed_memfd(np.full((2, 2, 2), v, np.float32)) for v in (7, 8, 9)]
    try:
        summary = mount.request("put", fds=fds, name="several", replace=True, **put_fields())
    finally:
        for fd in fds:
            os.close(fd)
    assert np.unique(nib.load(summary["path"]).get_fdata()).tolist() == [7.0]
    assert_serving(mount, ref_file)


def test_a_memfd_cannot_shrink_under_the_mount(mount, ref_file):
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    fd = sealed_memfd(values)
    try:
        summary = mount.request("put", fds=[fd], name="shrinking", replace=True,
                                **put_fields(shape=(10, 10, 10)))
        # the attack: the daemon died of SIGBUS on the next cat, set or save
        for size in (0, values.nbytes // 2):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, size)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(nib.load(summary["path"]).get_fdata(), values)
    mount.request("set", name="shrinking", fields=[["datatype", "int16"]])
    np.testing.assert_allclose(nib.load(summary["path"]).get_fdata(), values, atol=0.5)
    out = os.path.join(os.path.dirname(ref_file), "shrinking_saved.nii")
    mount.request("save", name="shrinking", out=out)
    np.testing.assert_allclose(nib.load(out).get_fdata(), values, atol=0.5)
    assert_serving(mount, ref_file)


def test_an_unsealed_memfd_shrunk_after_a_refused_put_harms_nothing(mount, ref_file):
    fd = os.memfd_create("abuse", os.MFD_ALLOW_SEALING)
    _fill(fd, np.ones((2, 2, 2), np.float32))
    try:
        with pytest.raises(imgfs.ImgfsError, match="F_SEAL_SHRINK"):
            mount.request("put", fds=[fd], name="unsealed", **put_fields())
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert_serving(mount, ref_file)


# -- overflowing numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("fields, expected", [
    (dict(data_offset=2**64 - 8), "data_offset 18446744073709551608 plus"),
    (dict(data_offset=2**63), "offset 9223372036854775808"),
    (dict(data_offset=2**64), "bad request"),
    (dict(data_offset=-8), "bad request"),
    (dict(data_offset=4), "not a multiple of 8"),
    (dict(shape=[2**32, 2**32, 2**32]), "overflows"),
    (dict(shape=[2**21, 2**21, 2**21]), "overflows"),
    (dict(shape=[1000, 1000, 1000]), "hold 32 bytes"),
    (dict(shape=[2**64, 1, 1]), "bad request"),
])
def test_overflowing_shapes_and_offsets_are_refused(mount, ref_file, fields, expected):
    fd = sealed_memfd(np.ones((2, 2, 2), np.float32))
    wire = put_fields(**{k: v for k, v in fields.items() if k == "shape"})
    wire.update({k: v for k, v in fields.items() if k != "shape"})
    try:
        with pytest.raises(imgfs.ImgfsError, match=expected):
            mount.request("put", fds=[fd], name="overflow", **wire)
    finally:
        os.close(fd)
    assert "overflow" not in [s["name"] for s in mount.ls()]
    assert_serving(mount, ref_file)


# -- a panic fails one request -----------------------------------------------------------------

def test_a_panic_in_a_fuse_read_or_a_request_fails_that_request_alone(mount, ref_file):
    path = os.path.join(mount.dir, PANICKY + ".nii")
    # more panics than the daemon has FUSE worker threads: none of them may be lost
    for _ in range(10):
        with pytest.raises(OSError) as raised:
            with open(path, "rb") as f:
                f.read()
        assert raised.value.errno == errno.EIO
        assert_serving(mount, ref_file)
    for _ in range(3):
        with pytest.raises(imgfs.ImgfsError, match="internal error"):
            mount.request("show", name=PANICKY)
    # the image whose lock was held by the panicking request is still usable
    assert mount.request("show", name="ref")["name"] == "ref"
    mount.request("set", name=PANICKY, fields=[["descrip", "still here"]])
    assert PANICKY in [s["name"] for s in mount.ls()]
    assert_serving(mount, ref_file)
