"""The exceptions the client raises: one class per error `kind` of the control protocol
(docs/PROTOCOL.md), so that callers branch on the class, never on the daemon's wording."""

from __future__ import annotations

from typing import Any


class ImgfsError(Exception):
    """The daemon refused a request, or no mount could be reached. `kind` is the protocol's
    error kind (None when the daemon sent none, or one this client does not know)."""

    kind: str | None = None

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class BadRequest(ImgfsError):
    """The request itself is malformed: bad JSON, an unknown op or field, a wrong type, or a
    `put` whose header or descriptor cannot be taken (not a sealed memfd, offsets that
    overflow)."""

    kind = "bad_request"


class BadName(ImgfsError):
    """An image name that cannot be a file name in the mount."""

    kind = "bad_name"


class UnknownName(ImgfsError):
    """No image of that name in the mount."""

    kind = "unknown_name"


class NameTaken(ImgfsError):
    """An image of that name exists already (and the request did not ask to replace it)."""

    kind = "name_taken"


class Refused(ImgfsError):
    """A well-formed request the daemon will not do: an unsafe path, an edit the image does not
    allow."""

    kind = "refused"


class BadFile(ImgfsError):
    """An image file that cannot be read as NIfTI or Analyze."""

    kind = "bad_file"


class Unavailable(ImgfsError):
    """The image's data cannot be served (its original changed, or proved unreadable)."""

    kind = "unavailable"


class IOFailure(ImgfsError):
    """The operating system refused a read or a write (the message names the file)."""

    kind = "io"


class Busy(ImgfsError):
    """The daemon is at a limit (connections, request size); try again later."""

    kind = "busy"


class InternalError(ImgfsError):
    """A bug in the daemon; that request failed alone and the mount serves on."""

    kind = "internal"


BY_KIND: dict[str, type[ImgfsError]] = {
    cls.kind: cls
    for cls in (
        BadRequest, BadName, UnknownName, NameTaken, Refused, BadFile, Unavailable, IOFailure,
        Busy, InternalError,
    )
    if cls.kind is not None
}


def from_answer(answer: dict[str, Any]) -> ImgfsError:
    """The exception for an error answer `{"ok": false, "kind": ..., "error": ...}`. A daemon
    that sends no kind (older ones), or a kind this client does not know, gives the base class
    with the kind kept as sent."""
    message = str(answer.get("error", "unknown error"))
    kind = answer.get("kind")
    cls = BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is not None:
        return cls(message)
    return ImgfsError(message, kind if isinstance(kind, str) else None)
