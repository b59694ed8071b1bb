"""A dask.distributed cluster whose two worker processes are two "nodes": each its own
XDG_RUNTIME_DIR and mount, sharing only the file system that holds the originals."""

import os
import shutil
import subprocess
import tempfile

import nibabel as nib
import numpy as np
from imgfs_testlib import mount, write_image  # noqa: F401 (mount: a fixture)

import imgfs
import imgfs.dask

distributed = __import__("pytest").importorskip("distributed")


class NodePlugin(imgfs.dask.MountPlugin):
    """Gives each worker a node of its own before the plugin finds the node's mount."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def setup(self, worker):
        run = os.path.join(self.base, f"node-{worker.name}")
        os.makedirs(run, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = run
        os.environ.pop("IMGFS_MOUNT", None)
        super().setup(worker)


def read_with_mrtrix(img, mount=None):
    """The task: a file for the image in this node's mount, read by mrinfo and mrstats."""
    path = imgfs.as_filename(img, mount)
    info = subprocess.run(["mrinfo", path], capture_output=True, text=True, check=True).stdout
    info = "\n".join(line for line in info.splitlines() if path not in line)
    stats = subprocess.run(["mrstats", path], capture_output=True, text=True, check=True).stdout
    origin = None
    if os.path.dirname(path) != os.path.dirname(img.get_filename()):
        with imgfs.Mount(os.path.dirname(path)) as m:
            (origin,) = [i["origin"] for i in m.ls() if i["path"] == path]
    return os.path.dirname(path), info, stats, origin


def _mounts_under(prefix):
    with open("/proc/mounts") as f:
        return [line for line in f if line.split()[1].startswith(prefix)]


def test_local_cluster_renders_recipes_on_each_node(tmp_path, mount):  # noqa: F811
    shared = tmp_path / "shared"
    shared.mkdir()
    rng = np.random.default_rng(12)
    imgs = []
    for i in range(8):
        src = write_image(shared / f"s{i}.nii", rng.normal(100, 20, (9, 8, 7)).astype(np.float32))
        img = imgfs.load(src)
        img.header["descrip"] = f"edit {i}".encode()
        img.set_sform(np.diag([1.0 + i / 4, 2.0, 3.0, 1.0]), code=2)
        if i == 3:
            img.set_data_dtype(np.int16)
        imgs.append(img)
    local = [read_with_mrtrix(img, mount) for img in imgs]

    # short: a control socket's path must fit in 108 bytes
    nodes = tempfile.mkdtemp(prefix="imgfs-nodes-")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            client.register_plugin(NodePlugin(nodes))
            workers = sorted(client.scheduler_info()["workers"])
            futures = [
                client.submit(read_with_mrtrix, img, workers=[workers[i % 2]],
                              allow_other_workers=False, pure=False)
                for i, img in enumerate(imgs)
            ]
            remote = client.gather(futures)
            assert _mounts_under(nodes) != []
    finally:
        cluster.close()
        leftover = _mounts_under(nodes)
        if not leftover:
            shutil.rmtree(nodes)

    homes = {r[0] for r in remote}
    assert len(homes) == 2 and all(h.startswith(nodes + "/node-") for h in homes), homes
    for i, (r, l) in enumerate(zip(remote, local)):
        assert r[1] == l[1], f"image {i}: mrinfo differs"
        assert r[2] == l[2], f"image {i}: mrstats differs"
        assert r[3] == imgs[i].get_filename(), "rendered from the original, not sent"
    assert "signed 16 bit integer" in remote[3][1]
    assert "edit 5" in remote[5][1]
    assert leftover == []
