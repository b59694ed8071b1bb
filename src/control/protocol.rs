//! The requests a mount understands, as JSON objects tagged by `op`, and the answers it gives:
//! one set of types for the daemon that writes them and the programs that read them, so the
//! wire format is written down once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::catalog::Summary;
use crate::format::Affine;

/// An extension as it crosses the socket: its content in base64.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WireExtension {
    pub code: i32,
    pub content: String,
}

/// One request line. Every op refuses fields it does not know, so a misspelt field is an error
/// and not silently ignored; the ops without fields are written `Ping {}` because serde's
/// `deny_unknown_fields` does not reach unit variants of a tagged enum.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the mount alive? Answers its directory and the daemon's pid.
    Ping {},
    /// Load an image's header from `path` (absolute); the name defaults to the file stem.
    Add {
        path: PathBuf,
        #[serde(default)]
        name: Option<String>,
    },
    /// Every image's summary.
    Ls {},
    /// One image's summary, header fields, affine and extensions.
    Show {
        name: String,
    },
    /// Header edits, applied in order, all or none: `[["descrip", "x"], ["datatype", "int16"]]`.
    /// Values may be strings, numbers or arrays of numbers.
    Set {
        name: String,
        fields: Vec<(String, Value)>,
        /// Send `{"progress": ...}` lines while a datatype change passes over the data.
        #[serde(default)]
        progress: bool,
    },
    /// Replace the affine (written to the sform, and the qform when it is in use).
    SetAffine {
        name: String,
        affine: Affine,
    },
    /// The design note's `as_filename`: the original while clean, the mount path otherwise.
    Path {
        name: String,
    },
    /// Override the state: `clean` or `dirty`.
    Mark {
        name: String,
        state: String,
    },
    Rm {
        name: String,
    },
    /// Write the image to `out` (absolute), in the format its name calls for. With `progress`,
    /// [`ProgressLine`]s come before the answer.
    Save {
        name: String,
        out: PathBuf,
        #[serde(default)]
        progress: bool,
    },
    /// A whole image from another process. The voxel data come in the file descriptor sent
    /// with this line (a memfd), `data_offset` bytes in, in file (Fortran) order and native byte
    /// order; `header` is the raw NIfTI header in base64.
    Put {
        name: String,
        header: String,
        affine: Affine,
        #[serde(default)]
        extensions: Vec<WireExtension>,
        shape: Vec<u64>,
        dtype: String,
        #[serde(default)]
        data_offset: u64,
        /// Set when the image may replace one of the same name.
        #[serde(default)]
        replace: bool,
        /// Set when the descriptor's bytes before `data_offset` are left for the daemon to
        /// write the served header into, so that the descriptor becomes the served file.
        #[serde(default)]
        in_place: bool,
    },
    /// Counters of how files were served.
    Stats {},
    /// Unmount and stop the daemon.
    Shutdown {},
}

/// What kind of failure an error answer reports, so a client can act on it without reading
/// the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed JSON, an unknown op or field, a value of the wrong type or form.
    BadRequest,
    /// An image name that is not allowed.
    BadName,
    /// No image has this name.
    UnknownName,
    /// An image of this name exists already.
    NameTaken,
    /// A valid request the image cannot take: a field that cannot be set, a bad value, a
    /// reshape that changes the voxel count, a datatype it cannot be converted to.
    Refused,
    /// A file that cannot be read or parsed as an image; the message names it.
    BadFile,
    /// The image's data cannot be read now: its original changed or is unreadable.
    Unavailable,
    /// Reading or writing somewhere else failed, e.g. the file `save` writes.
    Io,
    /// The mount serves too many connections already.
    Busy,
    /// An internal error (a bug) while handling the request; the mount serves on.
    Internal,
}

/// A failed request: `{"ok": false, "kind": "...", "error": "message"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    pub kind: ErrorKind,
    pub error: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, error: impl Into<String>) -> Failure {
        Failure {
            kind,
            error: error.into(),
        }
    }
}

/// One answer line: `ok` and the answer's own fields beside it.
#[derive(Clone, Debug, Serialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(flatten)]
    pub body: T,
}

/// The answer to `ping`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pong {
    pub mount: PathBuf,
    pub pid: u32,
}

/// The answer to `ls`.
#[derive(Clone, Debug, Serialize)]
pub struct Images {
    pub images: Vec<Summary>,
    /// Files written in the mount with an image's name that did not become images.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plain: Vec<PlainFile>,
}

/// A file written in the mount that stays a plain file, and why.
#[derive(Clone, Debug, Serialize)]
pub struct PlainFile {
    pub path: std::path::PathBuf,
    pub why: String,
}

/// An extension as `show` and `info` describe it: its code and its size on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtensionInfo {
    pub code: i32,
    pub size: usize,
}

/// The answer to `show`: a summary and the whole header.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub summary: Summary,
    /// Every header field by nibabel's name.
    pub header: serde_json::Map<String, Value>,
    pub affine: Affine,
    pub extensions: Vec<ExtensionInfo>,
}

/// One header field and its value after a `set`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub value: Value,
}

/// The answer to `set`: the image's summary, the fields the request named, and the fields that
/// changed as a consequence (`bitpix` after `datatype`, the scaling, ...).
#[derive(Clone, Debug, Serialize)]
pub struct SetAnswer {
    #[serde(flatten)]
    pub summary: Summary,
    pub changed: Vec<FieldChange>,
    pub also_changed: Vec<FieldChange>,
}

/// The answer to `path` and `save`: a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathAnswer {
    pub path: PathBuf,
}

/// The answer to `stats`: how the mount served files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Counters {
    pub passthrough_opens: u64,
    pub rendered_opens: u64,
    pub forwarded_reads: u64,
    pub rendered_reads: u64,
    pub images: usize,
    /// File versions the kernel still knows by inode.
    pub kernel_held_versions: usize,
}

/// The answer to `shutdown`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShuttingDown {
    pub shutting_down: bool,
}

/// A line sent before the answer of a request that asked for progress: no `ok`, so a client
/// tells it from the answer, which always comes last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressLine {
    pub progress: ProgressCount,
}

/// Bytes done of the total.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressCount {
    pub done: u64,
    pub total: u64,
}

/// The answer to `rm`: nothing beyond `ok`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {}

/// A value given in a `set` request, as the text the header parser takes.
pub fn field_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(field_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One valid request line per op.
    const EVERY_OP: &[&str] = &[
        r#"{"op":"ping"}"#,
        r#"{"op":"add","path":"/x.nii"}"#,
        r#"{"op":"ls"}"#,
        r#"{"op":"show","name":"a"}"#,
        r#"{"op":"set","name":"a","fields":[["descrip","x"]]}"#,
        r#"{"op":"set_affine","name":"a","affine":[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}"#,
        r#"{"op":"path","name":"a"}"#,
        r#"{"op":"mark","name":"a","state":"clean"}"#,
        r#"{"op":"rm","name":"a"}"#,
        r#"{"op":"save","name":"a","out":"/o.nii"}"#,
        r#"{"op":"put","name":"a","header":"","affine":[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]],"shape":[1],"dtype":"uint8"}"#,
        r#"{"op":"stats"}"#,
        r#"{"op":"shutdown"}"#,
    ];

    #[test]
    fn every_op_parses_without_extra_fields() {
        for line in EVERY_OP {
            let parsed: Result<Request, _> = serde_json::from_str(line);
            assert!(parsed.is_ok(), "{line}: {parsed:?}");
        }
    }

    #[test]
    fn every_op_refuses_an_unknown_field_by_name() {
        for line in EVERY_OP {
            let with_extra = format!("{},\"bogus_field\":1}}", &line[..line.len() - 1]);
            let err = serde_json::from_str::<Request>(&with_extra)
                .expect_err(&with_extra)
                .to_string();
            assert!(
                err.contains("unknown field `bogus_field`"),
                "{with_extra}: {err}"
            );
        }
    }

    #[test]
    fn an_error_answer_carries_its_kind_in_snake_case() {
        let line = serde_json::to_value(Reply {
            ok: false,
            body: Failure::new(ErrorKind::NameTaken, "an image named 'a' exists already"),
        })
        .unwrap();
        assert_eq!(
            line,
            serde_json::json!({"ok": false, "kind": "name_taken",
                               "error": "an image named 'a' exists already"})
        );
        for (kind, text) in [
            (ErrorKind::BadRequest, "bad_request"),
            (ErrorKind::BadName, "bad_name"),
            (ErrorKind::UnknownName, "unknown_name"),
            (ErrorKind::Refused, "refused"),
            (ErrorKind::BadFile, "bad_file"),
            (ErrorKind::Unavailable, "unavailable"),
            (ErrorKind::Io, "io"),
            (ErrorKind::Busy, "busy"),
            (ErrorKind::Internal, "internal"),
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), text);
        }
    }

    #[test]
    fn fieldless_ops_serialize_as_their_tag_alone() {
        let line = serde_json::to_string(&Request::Ping {}).unwrap();
        assert_eq!(line, r#"{"op":"ping"}"#);
    }
}
