"""A Dask worker plugin: a FUSE mount belongs to one node, and tasks land on any node, so every
worker makes sure its node's mount exists before it runs a task, and cleans up after itself.

    from dask.distributed import Client
    import imgfs, imgfs.dask

    client = Client("scheduler:8786")
    client.register_plugin(imgfs.dask.MountPlugin())
    imgs = [imgfs.load(p) for p in paths]            # edit headers, set_data_dtype, ...
    client.map(lambda img: run_tool(imgfs.as_filename(img)), imgs)

Images loaded with `imgfs.load` travel as recipes (imgfs.recipe): the workers render them from
the shared originals, the voxels never cross the network.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from . import handoff
from ._control import PathLike, default_dir, normalize_dir
from .mount import Mount


class MountPlugin(WorkerPlugin):
    """At worker start, attach to the node's mount (`mount`, default: $IMGFS_MOUNT, else the
    default mount), starting it if no other process has (imgfs.Mount: one per node and user).
    At teardown, remove the images this worker handed over and let go of the mount: it is
    unmounted if a client started it and no other process of the node still uses it."""

    name = "imgfs"

    def __init__(self, mount: PathLike | None = None) -> None:
        self.mount_dir = None if mount is None else normalize_dir(mount)
        self._mount: Mount | None = None

    def setup(self, worker: Any) -> None:
        # the worker's own mount object: `as_filename(img)` without `mount=` finds it
        self._mount = handoff._mount(self.mount_dir if self.mount_dir else default_dir())

    def teardown(self, worker: Any) -> None:
        m, self._mount = self._mount, None
        if m is None:
            return
        handoff.remove_handed(m)
        handoff.drop_mount(m)
        m.close()
