"""Outputs of command-line tools, written into the mount and read back without a disk file.

fslpy's `LOAD`, fslr's `retimg` and nipype give a tool a temporary output file and load it
afterwards. `output()` gives the tool a path in the mount instead: what it writes there is held
in the daemon's memory, becomes an image when the tool closes it, and `load()` returns it as a
nibabel image whose data map the mount's file (for `.nii`; nibabel decompresses `.nii.gz`).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import nibabel as nib

from .errors import ImgfsError
from .mount import Mount, PathLike

_SUFFIXES = (".nii.gz", ".nii", ".hdr.gz", ".hdr", ".img.gz", ".img")


class Output(os.PathLike):  # type: ignore[type-arg]
    """A file in the mount for a tool to write; `os.fspath(out)` and `out.path` give it."""

    def __init__(self, mount: Mount, filename: str) -> None:
        self.mount = mount
        self.path = os.path.join(mount.dir, filename)
        stem = next((filename[: -len(s)] for s in _SUFFIXES if filename.endswith(s)), filename)
        self.name = stem

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"imgfs.Output({self.path!r})"

    def load(self, **kwargs: Any) -> nib.filebasedimages.FileBasedImage:
        """The written image, as nibabel loads it from the mount (mapped, not copied, for
        `.nii`). Raises ImgfsError naming the file and why if the tool wrote no image there."""
        images = {i["name"] for i in self.mount.ls()}
        if self.name not in images:
            plain = {p["path"]: p["why"] for p in self.mount.request("ls").get("plain", [])}
            why = plain.get(self.path) or (
                "the tool wrote nothing there" if not os.path.exists(self.path)
                else "it is not an image file name"
            )
            raise ImgfsError(f"{self.path}: no image was written: {why}")
        return nib.load(self.mount.path(self.name), **kwargs)

    def remove(self) -> None:
        """Forget the image and remove its file from the mount."""
        if self.name in {i["name"] for i in self.mount.ls()}:
            self.mount.rm(self.name)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def output(
    filename: str = "out.nii", mount: Mount | PathLike | None = None, unique: bool = True
) -> Output:
    """A path in the mount for a tool's output. The suffix of `filename` picks the format the
    tool writes; with `unique` (the default) a random token is added to the stem, so that
    processes sharing the mount never write the same file."""
    m = mount if isinstance(mount, Mount) else Mount(mount)
    if unique:
        suffix = next((s for s in _SUFFIXES if filename.endswith(s)), "")
        stem = filename[: len(filename) - len(suffix)]
        filename = f"{stem}-{secrets.token_hex(4)}{suffix}"
    if "/" in filename or filename.startswith("."):
        raise ValueError(f"{filename!r}: an output is a plain file name in the mount")
    return Output(m, filename)
