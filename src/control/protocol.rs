//! The requests a mount understands, as JSON objects tagged by `op`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Write the image to `out` (absolute), in the format its name calls for.
    Save {
        name: String,
        out: PathBuf,
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
    },
    /// Counters of how files were served.
    Stats {},
    /// Unmount and stop the daemon.
    Shutdown {},
}

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
    fn fieldless_ops_serialize_as_their_tag_alone() {
        let line = serde_json::to_string(&Request::Ping {}).unwrap();
        assert_eq!(line, r#"{"op":"ping"}"#);
    }
}
