"""Hand nibabel images to command-line tools as files, through an imgfs mount.

`as_filename(img)` gives the image's own file while it is unchanged, and otherwise a file in the
mount that the daemon serves from memory (no temporary file is written). `Mount` wraps the
control protocol of docs/PROTOCOL.md. Arrays from `empty`, `zeros` or `asarray` live in shared
memory and are handed over without a copy. `output()` gives a tool an output path in the
mount and loads what it wrote back as a nibabel image. Refusals raise `ImgfsError`, or its subclass
for the protocol's error kind (`NameTaken`, `UnknownName`, ...).
"""

from .errors import (
    BadFile, BadName, BadRequest, Busy, ImgfsError, InternalError, IOFailure, NameTaken, Refused,
    Unavailable, UnknownName,
)
from .handoff import as_filename, load, put
from .mount import Mount
from .outputs import Output, output
from .recipe import OriginalChanged, register as _register_recipes
from .shm import asarray, empty, is_shared, zeros

__all__ = [
    "BadFile", "BadName", "BadRequest", "Busy", "IOFailure", "ImgfsError", "InternalError",
    "Mount", "NameTaken", "OriginalChanged", "Output", "Refused", "Unavailable", "UnknownName",
    "as_filename", "asarray", "empty", "is_shared", "load", "output", "put", "zeros",
]
__version__ = "0.1.0"

# nibabel images this client knows pickle as recipes (imgfs.recipe)
_register_recipes()
