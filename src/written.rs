//! Files written in the mount: tools put their outputs (and the directories they want) here,
//! and the next tool reads them without a disk in between.
//!
//! Each file's bytes live in its own memfd, so they are memory the kernel accounts to this
//! daemon, never a disk file, and a reader and a writer share them with no second copy. All
//! written files together may hold at most `limit` bytes: a write or truncate that would pass it
//! fails with ENOSPC before anything changes, so nothing already written is lost.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

/// Why a request on written files failed; each becomes the errno tmpfs would give.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WriteError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left: the mount's memory limit of {limit} bytes would be passed")]
    NoSpace { limit: u64 },
    #[error("file too large")]
    TooLarge,
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("{0}")]
    Io(String),
}

impl WriteError {
    pub fn errno(&self) -> i32 {
        match self {
            WriteError::NotFound => libc::ENOENT,
            WriteError::Exists => libc::EEXIST,
            WriteError::NotDir => libc::ENOTDIR,
            WriteError::IsDir => libc::EISDIR,
            WriteError::NotEmpty => libc::ENOTEMPTY,
            WriteError::NoSpace { .. } => libc::ENOSPC,
            WriteError::TooLarge => libc::EFBIG,
            WriteError::Busy(_) => libc::EBUSY,
            WriteError::Io(_) => libc::EIO,
        }
    }
}

/// The bytes held by every written file of a mount, against its limit.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    pub limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `more` bytes, or refuses if that would pass the limit.
    fn take(&self, more: u64) -> Result<(), WriteError> {
        let limit = self.limit;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(more).filter(|&total| total <= limit)
            })
            .map(drop)
            .map_err(|_| WriteError::NoSpace { limit })
    }

    /// Counts `more` bytes that are already written (past the daemon, by kernel passthrough):
    /// they are held whatever the limit says.
    fn add(&self, more: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_add(more))
            });
    }

    /// Refuses a new writer once the limit is reached (with kernel passthrough the daemon sees
    /// no writes, only opens and closes).
    pub fn check_room(&self) -> Result<(), WriteError> {
        if self.used() >= self.limit {
            return Err(WriteError::NoSpace { limit: self.limit });
        }
        Ok(())
    }

    fn give_back(&self, less: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(less))
            });
    }
}

/// One written file: a memfd and its length (which the budget counts).
#[derive(Debug)]
pub struct WrittenFile {
    pub ino: u64,
    state: Mutex<FileState>,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct FileState {
    fd: Arc<File>,
    len: u64,
    mtime: SystemTime,
    /// Counts changes, so a closing writer can tell whether it changed anything.
    changes: u64,
    /// The memfd is an image's too: the next change goes to a copy, so that the image keeps
    /// the bytes it was made from.
    shared: bool,
    /// Handles through which the kernel reads and writes the memfd directly (passthrough):
    /// while any is open the kernel keeps the inode bound to this memfd, so it is never
    /// swapped for a copy; changes then reach an image made from it.
    bound: u64,
}

fn memfd() -> Result<File, WriteError> {
    // SAFETY: the name is a NUL-terminated literal; the call touches no other memory.
    let fd = unsafe { libc::memfd_create(c"imgfs-written".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(WriteError::Io(io::Error::last_os_error().to_string()));
    }
    // SAFETY: memfd_create just returned this descriptor, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The kernel allows files up to this size on tmpfs (MAX_LFS_FILESIZE); past it, EFBIG.
const MAX_FILE: u64 = i64::MAX as u64;

impl WrittenFile {
    fn new(ino: u64, budget: Arc<Budget>) -> Result<WrittenFile, WriteError> {
        Ok(WrittenFile {
            ino,
            state: Mutex::new(FileState {
                fd: Arc::new(memfd()?),
                len: 0,
                mtime: SystemTime::now(),
                changes: 0,
                shared: false,
                bound: 0,
            }),
            budget,
        })
    }

    /// How many changes the file has had.
    pub fn changes(&self) -> u64 {
        self.state.lock().changes
    }

    /// Hands the memfd over to an image: it is never changed again, and the file's next
    /// change goes to a copy. Returns the memfd and the length it holds.
    pub fn share(&self) -> (Arc<File>, u64) {
        let mut state = self.state.lock();
        state.shared = true;
        (state.fd.clone(), state.len)
    }

    /// Before a change: if an image holds the memfd, moves the file to a fresh one holding its
    /// first `keep` bytes.
    fn unshare(state: &mut FileState, keep: u64) -> Result<(), WriteError> {
        if !state.shared || state.bound > 0 {
            return Ok(());
        }
        let io = |e: io::Error| WriteError::Io(e.to_string());
        let copy = memfd()?;
        let keep = keep.min(state.len);
        let mut buf = vec![0; 1 << 20];
        let mut at = 0;
        while at < keep {
            let n = (keep - at).min(buf.len() as u64) as usize;
            state.fd.read_exact_at(&mut buf[..n], at).map_err(io)?;
            copy.write_all_at(&buf[..n], at).map_err(io)?;
            at += n as u64;
        }
        copy.set_len(state.len).map_err(io)?;
        state.fd = Arc::new(copy);
        state.shared = false;
        Ok(())
    }

    /// The file's length: the memfd's own, as kernel passthrough writes it without the daemon.
    pub fn len(&self) -> u64 {
        let state = self.state.lock();
        state.fd.metadata().map_or(state.len, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the file last changed: the memfd's mtime, which passthrough writes move too.
    pub fn mtime(&self) -> SystemTime {
        let state = self.state.lock();
        state
            .fd
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(state.mtime)
    }

    /// Readies the file for a writer that the kernel lets write the memfd directly (FUSE
    /// passthrough): refuses past the memory limit, and moves the file off a memfd an image
    /// holds unless the kernel is bound to it. Returns the memfd to hand the kernel.
    pub fn open_for_passthrough(&self, write: bool) -> Result<Arc<File>, WriteError> {
        let mut state = self.state.lock();
        if write {
            self.budget.check_room()?;
            WrittenFile::unshare(&mut state, u64::MAX)?;
        }
        state.bound += 1;
        Ok(state.fd.clone())
    }

    /// A passthrough handle closed.
    pub fn unbind(&self) {
        let mut state = self.state.lock();
        state.bound = state.bound.saturating_sub(1);
    }

    /// After a passthrough writer closes: counts what it wrote against the budget (the limit
    /// cannot refuse bytes already written) and records a change.
    pub fn settle(&self) {
        let mut state = self.state.lock();
        let Ok(len) = state.fd.metadata().map(|m| m.len()) else {
            return;
        };
        if len > state.len {
            self.budget.add(len - state.len);
        } else {
            self.budget.give_back(state.len - len);
        }
        state.len = len;
        state.changes += 1;
    }

    /// Bytes `[offset, offset + size)`, shorter at the end; a hole reads as zeros.
    pub fn read(&self, offset: u64, size: usize) -> Result<Vec<u8>, WriteError> {
        let len = self.len();
        let end = offset.saturating_add(size as u64).min(len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; (end - offset) as usize];
        let fd = self.state.lock().fd.clone();
        fd.read_exact_at(&mut buf, offset)
            .map_err(|e| WriteError::Io(e.to_string()))?;
        Ok(buf)
    }

    /// Writes `data` at `offset`; a gap before it is a hole, as on tmpfs.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, WriteError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= MAX_FILE)
            .ok_or(WriteError::TooLarge)?;
        let mut state = self.state.lock();
        let grow = end.saturating_sub(state.len);
        self.budget.take(grow)?;
        let written = WrittenFile::unshare(&mut state, u64::MAX).and_then(|()| {
            state
                .fd
                .write_all_at(data, offset)
                .map_err(|e| WriteError::Io(e.to_string()))
        });
        if let Err(e) = written {
            self.budget.give_back(grow);
            // A partial write may have grown the memfd: put its length back.
            let _ = state.fd.set_len(state.len);
            return Err(e);
        }
        state.len = state.len.max(end);
        state.mtime = SystemTime::now();
        state.changes += 1;
        Ok(data.len())
    }

    /// Truncates or extends (with a hole) to `len`.
    pub fn set_len(&self, len: u64) -> Result<(), WriteError> {
        if len > MAX_FILE {
            return Err(WriteError::TooLarge);
        }
        let mut state = self.state.lock();
        if len > state.len {
            self.budget.take(len - state.len)?;
        }
        let done = WrittenFile::unshare(&mut state, len).and_then(|()| {
            state
                .fd
                .set_len(len)
                .map_err(|e| WriteError::Io(e.to_string()))
        });
        if let Err(e) = done {
            if len > state.len {
                self.budget.give_back(len - state.len);
            }
            return Err(e);
        }
        if len < state.len {
            self.budget.give_back(state.len - len);
        }
        state.len = len;
        state.mtime = SystemTime::now();
        state.changes += 1;
        Ok(())
    }

    pub fn set_mtime(&self, mtime: SystemTime) {
        let mut state = self.state.lock();
        state.mtime = mtime;
        // The memfd's mtime is the one reported: it follows passthrough writes.
        let _ = state.fd.set_modified(mtime);
    }
}

impl Drop for WrittenFile {
    fn drop(&mut self) {
        // The memfd closes with it: its memory is free again.
        self.budget.give_back(self.state.get_mut().len);
    }
}

/// A node of the written tree.
#[derive(Debug, Clone)]
pub enum Node {
    File(Arc<WrittenFile>),
    Dir(u64),
}

impl Node {
    pub fn ino(&self) -> u64 {
        match self {
            Node::File(f) => f.ino,
            Node::Dir(ino) => *ino,
        }
    }
}

/// A written directory: its entries by name, and when they last changed.
#[derive(Debug, Default)]
pub struct Dir {
    pub entries: BTreeMap<String, Node>,
    pub parent: u64,
    pub mtime: Option<SystemTime>,
}

/// The written directories by inode (the mount's root among them) and the files they name.
#[derive(Debug)]
pub struct Tree {
    pub dirs: BTreeMap<u64, Dir>,
    pub budget: Arc<Budget>,
}

impl Tree {
    pub fn new(root: u64, budget: Arc<Budget>) -> Tree {
        let mut dirs = BTreeMap::new();
        dirs.insert(
            root,
            Dir {
                parent: root,
                ..Dir::default()
            },
        );
        Tree { dirs, budget }
    }

    pub fn dir(&self, ino: u64) -> Result<&Dir, WriteError> {
        self.dirs.get(&ino).ok_or(WriteError::NotDir)
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, WriteError> {
        self.dirs.get_mut(&ino).ok_or(WriteError::NotDir)
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Node, WriteError> {
        self.dir(parent)?
            .entries
            .get(name)
            .cloned()
            .ok_or(WriteError::NotFound)
    }

    /// Creates an empty file `name` in `parent`, or opens the existing one unless `exclusive`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        ino: u64,
        exclusive: bool,
    ) -> Result<Arc<WrittenFile>, WriteError> {
        match self.lookup(parent, name) {
            Ok(Node::File(_)) if exclusive => return Err(WriteError::Exists),
            Ok(Node::File(f)) => return Ok(f),
            Ok(Node::Dir(_)) => return Err(WriteError::IsDir),
            Err(WriteError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let file = Arc::new(WrittenFile::new(ino, self.budget.clone())?);
        let dir = self.dir_mut(parent)?;
        dir.entries
            .insert(name.to_string(), Node::File(file.clone()));
        dir.mtime = Some(SystemTime::now());
        Ok(file)
    }

    pub fn mkdir(&mut self, parent: u64, name: &str, ino: u64) -> Result<(), WriteError> {
        if self.lookup(parent, name).is_ok() {
            return Err(WriteError::Exists);
        }
        let dir = self.dir_mut(parent)?;
        dir.entries.insert(name.to_string(), Node::Dir(ino));
        dir.mtime = Some(SystemTime::now());
        self.dirs.insert(
            ino,
            Dir {
                parent,
                mtime: Some(SystemTime::now()),
                ..Dir::default()
            },
        );
        Ok(())
    }

    /// Removes a file's name; its bytes stay while a handle holds the file.
    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<Arc<WrittenFile>, WriteError> {
        let Node::File(file) = self.lookup(parent, name)? else {
            return Err(WriteError::IsDir);
        };
        let dir = self.dir_mut(parent)?;
        dir.entries.remove(name);
        dir.mtime = Some(SystemTime::now());
        Ok(file)
    }

    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), WriteError> {
        let Node::Dir(ino) = self.lookup(parent, name)? else {
            return Err(WriteError::NotDir);
        };
        if !self.dir(ino)?.entries.is_empty() {
            return Err(WriteError::NotEmpty);
        }
        self.dirs.remove(&ino);
        let dir = self.dir_mut(parent)?;
        dir.entries.remove(name);
        dir.mtime = Some(SystemTime::now());
        Ok(())
    }

    /// Moves `name` to `new_name`, replacing a file there (or an empty directory by a
    /// directory), as rename(2) does. Returns the replaced file, if any.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<Option<Node>, WriteError> {
        let node = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if let Node::Dir(moved) = node {
            // A directory may not move into itself or below itself.
            let mut at = new_parent;
            loop {
                if at == moved {
                    return Err(WriteError::Io("a directory cannot move into itself".into()));
                }
                let up = self.dir(at)?.parent;
                if up == at {
                    break;
                }
                at = up;
            }
        }
        let replaced = match (self.lookup(new_parent, new_name), &node) {
            (Ok(old), _) if old.ino() == node.ino() => return Ok(None),
            (Ok(_), _) if no_replace => return Err(WriteError::Exists),
            (Ok(Node::Dir(_)), Node::File(_)) => return Err(WriteError::IsDir),
            (Ok(Node::File(_)), Node::Dir(_)) => return Err(WriteError::NotDir),
            (Ok(Node::Dir(d)), Node::Dir(_)) => {
                if !self.dir(d)?.entries.is_empty() {
                    return Err(WriteError::NotEmpty);
                }
                self.dirs.remove(&d);
                Some(Node::Dir(d))
            }
            (Ok(old), _) => Some(old),
            (Err(WriteError::NotFound), _) => None,
            (Err(e), _) => return Err(e),
        };
        let now = Some(SystemTime::now());
        let from = self.dir_mut(parent)?;
        from.entries.remove(name);
        from.mtime = now;
        let to = self.dir_mut(new_parent)?;
        to.entries.insert(new_name.to_string(), node.clone());
        to.mtime = now;
        if let Node::Dir(moved) = node {
            self.dir_mut(moved)?.parent = new_parent;
        }
        Ok(replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(limit: u64) -> Tree {
        Tree::new(1, Budget::new(limit))
    }

    #[test]
    fn a_write_past_the_limit_fails_with_enospc_and_keeps_what_was_written() {
        let mut t = tree(10);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(0, b"12345678").unwrap();
        let err = a.write(8, b"abc").unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC);
        assert_eq!(a.read(0, 100).unwrap(), b"12345678");
        assert_eq!(t.budget.used(), 8);
        // Rewriting within the file's length needs no more memory.
        a.write(0, b"ab").unwrap();
        assert_eq!(a.read(0, 3).unwrap(), b"ab3");
    }

    #[test]
    fn sparse_writes_read_zeros_in_the_hole_and_truncate_gives_memory_back() {
        let mut t = tree(1 << 20);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(1000, b"x").unwrap();
        assert_eq!(a.len(), 1001);
        assert_eq!(a.read(998, 10).unwrap(), b"\0\0x");
        a.set_len(10).unwrap();
        assert_eq!(t.budget.used(), 10);
        drop(t.unlink(1, "a").unwrap());
        drop(a);
        assert_eq!(t.budget.used(), 0);
    }

    #[test]
    fn a_shared_memfd_keeps_its_bytes_while_the_file_changes() {
        let mut t = tree(1 << 20);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(0, b"version one").unwrap();
        let (held, len) = a.share();
        a.set_len(0).unwrap();
        a.write(0, b"two").unwrap();
        let mut old = vec![0; len as usize];
        held.read_exact_at(&mut old, 0).unwrap();
        assert_eq!(old, b"version one");
        assert_eq!(a.read(0, 100).unwrap(), b"two");
        let (_, _) = a.share();
        a.write(3, b"!").unwrap();
        assert_eq!(a.read(0, 100).unwrap(), b"two!");
    }

    #[test]
    fn rename_over_a_file_replaces_it_and_a_directory_cannot_move_below_itself() {
        let mut t = tree(1 << 20);
        let a = t.create(1, "a", 2, true).unwrap();
        t.create(1, "b", 3, true).unwrap();
        let old = t.rename(1, "a", 1, "b", false).unwrap();
        assert_eq!(old.unwrap().ino(), 3);
        assert_eq!(t.lookup(1, "b").unwrap().ino(), a.ino);
        assert_eq!(t.lookup(1, "a").unwrap_err(), WriteError::NotFound);
        t.mkdir(1, "d", 4).unwrap();
        t.mkdir(4, "e", 5).unwrap();
        assert!(t.rename(1, "d", 5, "x", false).is_err());
        assert_eq!(t.rmdir(1, "d").unwrap_err(), WriteError::NotEmpty);
    }
}
