"""Writing into the mount under load: several writer processes at once, each writing files in
random pieces at random offsets (pwrite, appends, truncates, renames), while reader processes
read the same files. Without passthrough every write passes the daemon, which answers a write
before copying it into memory: whatever the interleaving, each file must end holding exactly
what its writer wrote, read past the kernel's page cache. Also runs unprivileged."""
import multiprocessing
import os
import random

import pytest

from helpers import describe, imgfs, read_past_the_cache

WRITERS = 4
FILES_PER_WRITER = 3
ROUNDS = int(os.environ.get("IMGFS_TEST_ROUNDS", "200"))


def ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


def writer(mnt, index, seed, results):
    """Writes FILES_PER_WRITER files in random pieces, keeping a model of each in memory;
    reports any file whose bytes differ from the model."""
    rng = random.Random(seed)
    models = {}
    fds = {}
    for k in range(FILES_PER_WRITER):
        name = os.path.join(mnt, f"w{index}-{k}.tmp")
        fds[name] = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        models[name] = bytearray()
    for _ in range(ROUNDS):
        name = rng.choice(sorted(fds))
        model, fd = models[name], fds[name]
        action = rng.random()
        if action < 0.7:
            size = rng.choice([1, 4095, 4096, 65536, 200_000, 1 << 20])
            at = rng.randrange(0, len(model) + 100_000)
            data = rng.randbytes(size)
            os.pwrite(fd, data, at)
            if at > len(model):
                model.extend(bytes(at - len(model)))
            model[at:at + size] = data
        elif action < 0.85:
            size = rng.randrange(0, len(model) + 50_000)
            os.ftruncate(fd, size)
            del model[size:]
            model.extend(bytes(size - len(model)))
        else:
            # Renamed while open: the handle keeps writing the same file.
            new = name.replace(".tmp", ".r.tmp") if ".r." not in name else name.replace(".r.", ".")
            os.rename(name, new)
            fds[new], models[new] = fds.pop(name), models.pop(name)
    bad = []
    for name, fd in fds.items():
        os.close(fd)
        got = read_past_the_cache(name)
        if got != bytes(models[name]):
            bad.append(f"{name}: {len(got)} bytes, expected {len(models[name])}")
    results.put((index, bad))


def reader(mnt, stop):
    while not stop.is_set():
        for name in os.listdir(mnt):
            try:
                read_past_the_cache(os.path.join(mnt, name))
            except FileNotFoundError:
                pass  # renamed meanwhile


@pytest.mark.parametrize("options", [["--no-passthrough"], []], ids=["forwarded", "default"])
def test_concurrent_writers_and_readers_leave_every_file_as_its_writer_wrote_it(tmp_path, options):
    """As root, `default` has the kernel write the memfds directly (passthrough); as an
    ordinary user both forward every write to the daemon."""
    mnt = str(tmp_path / "m")
    ok(imgfs("mount", mnt, *options))
    try:
        ctx = multiprocessing.get_context("fork")
        results, stop = ctx.Queue(), ctx.Event()
        readers = [ctx.Process(target=reader, args=(mnt, stop)) for _ in range(2)]
        writers = [ctx.Process(target=writer, args=(mnt, i, 1000 + i, results))
                   for i in range(WRITERS)]
        for p in readers + writers:
            p.start()
        reports = [results.get(timeout=240) for _ in writers]
        stop.set()
        for p in writers + readers:
            p.join(timeout=60)
            assert p.exitcode == 0, f"a worker failed (exit {p.exitcode})"
        bad = [line for _, lines in reports for line in lines]
        assert not bad, "\n".join(bad)
        assert ok(imgfs("ls", "--mount", mnt))
    finally:
        ok(imgfs("unmount", mnt))
