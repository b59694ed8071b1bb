//! A client of the control socket, for the CLI and Rust programs.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use super::protocol::{ErrorKind, Failure, ProgressLine, Request};
use crate::progress::{Progress, Silent};

/// A connection to a running mount.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Why a request failed: the mount could not be reached, or it refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the mount's socket. The OS error is only worth showing when it is
    /// not the usual one (no socket, or a socket left by a dead daemon).
    #[error(
        "no imgfs mount at {dir}; start one with `imgfs mount {dir}`{}",
        unusual_cause(socket, cause)
    )]
    NotRunning {
        dir: String,
        socket: String,
        cause: io::Error,
    },
    #[error("lost the connection to the mount: {0}")]
    Io(#[from] io::Error),
    /// The mount answered with an error.
    #[error("{0}")]
    Refused(Failure),
}

fn unusual_cause(socket: &str, cause: &io::Error) -> String {
    match cause.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => String::new(),
        _ => format!(" (control socket {socket}: {cause})"),
    }
}

impl ClientError {
    /// The kind of a refusal, if the mount refused.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Refused(f) => Some(f.kind),
            _ => None,
        }
    }
}

impl Client {
    /// Connects to the mount at `mount_dir` (normalized).
    pub fn connect(mount_dir: &Path) -> Result<Client, ClientError> {
        let socket = super::socket_path(mount_dir)?;
        let stream = UnixStream::connect(&socket).map_err(|cause| ClientError::NotRunning {
            dir: mount_dir.display().to_string(),
            socket: socket.display().to_string(),
            cause,
        })?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends a request and returns the response's fields; a refusal becomes an error.
    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        self.call_with_progress(request, &Silent)
    }

    /// [`Client::call`], passing the progress lines that come before the answer (of a request
    /// that asked for them) to `progress`.
    pub fn call_with_progress(
        &mut self,
        request: &Request,
        progress: &dyn Progress,
    ) -> Result<Value, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let value = loop {
            let mut reply = String::new();
            if self.reader.read_line(&mut reply)? == 0 {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the mount closed the connection",
                )));
            }
            let value: Value = serde_json::from_str(&reply).map_err(io::Error::other)?;
            if value.get("ok").is_some() {
                break value;
            }
            if let Ok(line) = serde_json::from_value::<ProgressLine>(value) {
                progress.update(line.progress.done, line.progress.total);
            }
        };
        if value["ok"] == Value::Bool(true) {
            Ok(value)
        } else {
            let failure = serde_json::from_value(value.clone()).unwrap_or_else(|_| {
                Failure::new(
                    ErrorKind::Internal,
                    value["error"].as_str().unwrap_or("unknown error"),
                )
            });
            Err(ClientError::Refused(failure))
        }
    }
}
