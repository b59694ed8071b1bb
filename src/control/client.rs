//! A client of the control socket, for the CLI and Rust programs.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use super::protocol::Request;

/// A connection to a running mount.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Why a request failed: the mount could not be reached, or it refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no imgfs mount is running at {dir} (control socket {socket}: {source})")]
    NotRunning {
        dir: String,
        socket: String,
        source: io::Error,
    },
    #[error("lost the connection to the mount: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Refused(String),
}

impl Client {
    /// Connects to the mount at `mount_dir` (normalized).
    pub fn connect(mount_dir: &Path) -> Result<Client, ClientError> {
        let socket = super::socket_path(mount_dir)?;
        let stream = UnixStream::connect(&socket).map_err(|source| ClientError::NotRunning {
            dir: mount_dir.display().to_string(),
            socket: socket.display().to_string(),
            source,
        })?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends a request and returns the response's fields; a refusal becomes an error.
    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the mount closed the connection",
            )));
        }
        let value: Value = serde_json::from_str(&reply).map_err(io::Error::other)?;
        if value["ok"] == Value::Bool(true) {
            Ok(value)
        } else {
            Err(ClientError::Refused(
                value["error"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_string(),
            ))
        }
    }
}
