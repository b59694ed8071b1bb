//! Where an image came from and what its files looked like at load, so that imgfs notices
//! when the original changes or is replaced on disk.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::FileMap;

/// What identifies one state of a file: a replacement changes the inode, a rewrite the change
/// time (and usually the size or mtime). The change time counts because a rewrite can keep
/// the size and set the mtime back (`touch -d`, `os.utime`), which no one can do to the
/// change time short of setting the system clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub nlink: u64,
}

impl FileIdentity {
    pub fn of(meta: &Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            nlink: meta.nlink(),
        }
    }

    /// Whether `now` is this file with the same content. A new or removed name (a hard link,
    /// an unlink, a rename over it) moves the change time too, without touching the content:
    /// a replaced original must keep serving what was loaded. So a change time that moved
    /// along with the link count is taken as a change of names only.
    pub fn same_content(&self, now: &FileIdentity) -> bool {
        (self.dev, self.ino, self.size, self.mtime_ns) == (now.dev, now.ino, now.size, now.mtime_ns)
            && (self.ctime_ns == now.ctime_ns || self.nlink != now.nlink)
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
        } else if !self.same_content(&now) {
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
    /// Set once the data in the files turn out unreadable (a truncated or corrupt gzip
    /// stream): found by the first read, which every later one and the state then report.
    unreadable: OnceLock<String>,
    /// Open descriptors of the files, checked in place of their paths: for files whose paths
    /// were private links that are gone since load (the memfds of files written in the mount).
    pinned: OnceLock<Vec<(PathBuf, std::fs::File)>>,
}

impl Origin {
    pub fn new(file_map: FileMap, seen: Vec<(PathBuf, FileIdentity)>) -> Origin {
        Origin {
            file_map,
            seen,
            lost: OnceLock::new(),
            unreadable: OnceLock::new(),
            pinned: OnceLock::new(),
        }
    }

    /// From now on, the files at these paths are checked through these descriptors: the
    /// paths may go.
    pub fn pin(&self, files: Vec<(PathBuf, std::fs::File)>) {
        let _ = self.pinned.set(files);
    }

    /// Compares the files with what was seen at load; the first difference is kept for good.
    pub fn check(&self) -> Option<&str> {
        if self.lost.get().is_none() {
            for (path, identity) in &self.seen {
                let pinned = self
                    .pinned
                    .get()
                    .and_then(|files| files.iter().find(|(p, _)| p == path));
                let now = match pinned {
                    Some((_, file)) => file.metadata(),
                    None => std::fs::metadata(path),
                };
                if let Some(why) = identity.difference(path, now) {
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

    /// Records that the data could not be read from the files, and why.
    pub fn mark_unreadable(&self, why: String) {
        let _ = self.unreadable.set(why);
    }

    /// Why the data cannot be read from the files, once a read found out.
    pub fn unreadable(&self) -> Option<&str> {
        self.unreadable.get().map(String::as_str)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn identity(path: &Path) -> FileIdentity {
        FileIdentity::of(&fs::metadata(path).unwrap())
    }

    #[test]
    fn a_same_size_rewrite_with_the_mtime_set_back_is_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.nii");
        fs::write(&path, b"original bytes").unwrap();
        let seen = identity(&path);
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&path, b"modified bytes").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(seen.mtime())
            .unwrap();
        let now = identity(&path);
        assert_eq!((now.size, now.mtime_ns), (seen.size, seen.mtime_ns));
        assert!(!seen.same_content(&now));
    }

    #[test]
    fn a_new_or_removed_name_is_no_change() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.nii");
        fs::write(&path, b"bytes").unwrap();
        let file = fs::File::open(&path).unwrap();
        let seen = identity(&path);
        std::thread::sleep(Duration::from_millis(20));
        fs::hard_link(&path, tmp.path().join("b.nii")).unwrap();
        assert!(seen.same_content(&identity(&path)));
        let seen = identity(&path);
        let other = tmp.path().join("c.nii");
        fs::write(&other, b"other").unwrap();
        fs::rename(&other, &path).unwrap();
        fs::remove_file(tmp.path().join("b.nii")).unwrap();
        let now = FileIdentity::of(&file.metadata().unwrap());
        assert_ne!(now.ctime_ns, seen.ctime_ns);
        assert!(seen.same_content(&now));
    }
}
