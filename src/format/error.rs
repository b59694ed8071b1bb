//! The error every format operation returns: it names the file and says what is wrong with it.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be opened, read or written.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    /// The file's content is not a valid image.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    /// A valid file that imgfs does not handle, or a request it cannot carry out.
    #[error("{}: {problem}", path.display())]
    Unsupported { path: PathBuf, problem: String },
}

impl FormatError {
    pub fn io(path: &Path, source: io::Error) -> FormatError {
        FormatError::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }

    pub fn invalid(path: &Path, problem: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub fn unsupported(path: &Path, problem: impl Into<String>) -> FormatError {
        FormatError::Unsupported {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            FormatError::Io { path, .. }
            | FormatError::Invalid { path, .. }
            | FormatError::Unsupported { path, .. } => path,
        }
    }
}
