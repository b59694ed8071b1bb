//! Where an image came from and what its files looked like at load, so that imgfs notices
//! when the original changes or is replaced on disk.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::FileMap;

/// What identifies one state of a file: a rewrite changes the size or mtime, a replacement the
/// inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    pub fn mtime(&self) -> SystemTime {
        let ns = self.mtime_ns.max(0) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }

    /// How `now` differs from this, in words; `None` if it does not.
    fn difference(&self, path: &Path, now: std::io::Result<Metadata>) -> Option<String> {
        let shown = path.display();
        let now = match now {
            Ok(meta) => FileIdentity::of(&meta),
            Err(e) => return Some(format!("original {shown} is gone since load ({e})")),
        };
        if (now.dev, now.ino) != (self.dev, self.ino) {
            Some(format!("original {shown} was replaced on disk since load"))
        } else if now != *self {
            Some(format!("original {shown} was modified on disk since load"))
        } else {
            None
        }
    }
}

/// The file or files an image was loaded from.
#[derive(Debug)]
pub struct Origin {
    pub file_map: FileMap,
    /// Each file of the image (header, image, sidecar) as seen at load.
    pub seen: Vec<(PathBuf, FileIdentity)>,
    /// Set once the files are found changed: the image never corresponds to them again.
    lost: OnceLock<String>,
}

impl Origin {
    pub fn new(file_map: FileMap, seen: Vec<(PathBuf, FileIdentity)>) -> Origin {
        Origin {
            file_map,
            seen,
            lost: OnceLock::new(),
        }
    }

    /// Compares the files with what was seen at load; the first difference is kept for good.
    pub fn check(&self) -> Option<&str> {
        if self.lost.get().is_none() {
            for (path, identity) in &self.seen {
                if let Some(why) = identity.difference(path, std::fs::metadata(path)) {
                    let _ = self.lost.set(why);
                    break;
                }
            }
        }
        self.lost.get().map(String::as_str)
    }

    /// Records a change found elsewhere (a read that saw the file differ).
    pub fn mark_lost(&self, why: String) {
        let _ = self.lost.set(why);
    }

    /// The path a user knows the image by: the `.nii`, or the `.hdr` of a pair.
    pub fn path(&self) -> &Path {
        &self.file_map.header
    }

    /// The original's mtime at load.
    pub fn mtime(&self) -> SystemTime {
        self.seen
            .iter()
            .map(|(_, id)| id.mtime())
            .max()
            .unwrap_or(UNIX_EPOCH)
    }
}
