"""Hand nibabel images to command-line tools as files, through an imgfs mount.

`as_filename(img)` gives the image's own file while it is unchanged, and otherwise a file in the
mount that the daemon serves from memory (no temporary file is written). `Mount` wraps the
control protocol of docs/PROTOCOL.md.
"""

from ._control import ImgfsError
from .handoff import as_filename, load, put
from .mount import Mount

__all__ = ["ImgfsError", "Mount", "as_filename", "load", "put"]
__version__ = "0.1.0"
