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
    #[error("invalid: {0}")]
    Invalid(&'static str),
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
            WriteError::Invalid(_) => libc::EINVAL,
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

/// A memfd and the bytes the budget counts for it. A written file and the images made from it
/// share one: its bytes count once, for as long as any of them holds it, and come back to the
/// budget when the last lets go.
#[derive(Debug)]
pub struct Memfd {
    pub file: File,
    charged: AtomicU64,
    budget: Arc<Budget>,
}

impl Memfd {
    fn new(budget: Arc<Budget>) -> Result<Memfd, WriteError> {
        // SAFETY: the name is a NUL-terminated literal; the call touches no other memory.
        let fd = unsafe { libc::memfd_create(c"imgfs-written".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(WriteError::Io(io::Error::last_os_error().to_string()));
        }
        Ok(Memfd {
            // SAFETY: memfd_create just returned this descriptor, and nothing else owns it.
            file: unsafe { File::from_raw_fd(fd) },
            charged: AtomicU64::new(0),
            budget,
        })
    }

    /// The bytes counted for this memfd.
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// Counts `more` bytes for it, or refuses past the limit.
    fn charge(&self, more: u64) -> Result<(), WriteError> {
        self.budget.take(more)?;
        self.charged.fetch_add(more, Ordering::Relaxed);
        Ok(())
    }

    /// Counts `more` bytes already written past the daemon (kernel passthrough).
    fn charge_anyway(&self, more: u64) {
        self.budget.add(more);
        self.charged.fetch_add(more, Ordering::Relaxed);
    }

    fn refund(&self, less: u64) {
        let less = less.min(self.charged());
        self.charged.fetch_sub(less, Ordering::Relaxed);
        self.budget.give_back(less);
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        // The memfd closes with it: its memory is free again.
        self.budget.give_back(*self.charged.get_mut());
    }
}

/// One written file: a memfd and its length (which the memfd's charge follows).
#[derive(Debug)]
pub struct WrittenFile {
    pub ino: u64,
    state: Mutex<FileState>,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct FileState {
    fd: Arc<Memfd>,
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
    /// Bytes acknowledged to a writer could not be stored, and why: every later write and
    /// close of the file fails with it.
    lost: Option<String>,
}

/// The kernel allows files up to this size on tmpfs (MAX_LFS_FILESIZE); past it, EFBIG.
const MAX_FILE: u64 = i64::MAX as u64;

impl WrittenFile {
    fn new(ino: u64, budget: Arc<Budget>) -> Result<WrittenFile, WriteError> {
        Ok(WrittenFile {
            ino,
            state: Mutex::new(FileState {
                fd: Arc::new(Memfd::new(budget.clone())?),
                len: 0,
                mtime: SystemTime::now(),
                changes: 0,
                shared: false,
                bound: 0,
                lost: None,
            }),
            budget,
        })
    }

    /// How many changes the file has had.
    pub fn changes(&self) -> u64 {
        self.state.lock().changes
    }

    /// Hands the memfd over to an image: it is never changed again, and the file's next
    /// change goes to a copy. Returns the memfd and whether an image held it already.
    pub fn share(&self) -> (Arc<Memfd>, bool) {
        let mut state = self.state.lock();
        let was = std::mem::replace(&mut state.shared, true);
        (state.fd.clone(), was)
    }

    /// Takes back [`WrittenFile::share`] when no image was made from `memfd` after all: the
    /// file's next change then needs no copy.
    pub fn unshare_unused(&self, memfd: &Arc<Memfd>) {
        let mut state = self.state.lock();
        if Arc::ptr_eq(&state.fd, memfd) {
            state.shared = false;
        }
    }

    /// Before a change: if an image holds the memfd, moves the file to a fresh one holding its
    /// first `keep` bytes. The copy is memory too: past the limit, ENOSPC.
    fn unshare(&self, state: &mut FileState, keep: u64) -> Result<(), WriteError> {
        if !state.shared || state.bound > 0 {
            return Ok(());
        }
        let io = |e: io::Error| WriteError::Io(e.to_string());
        let copy = Memfd::new(self.budget.clone())?;
        copy.charge(state.len)?;
        let keep = keep.min(state.len);
        let mut buf = vec![0; 1 << 20];
        let mut at = 0;
        while at < keep {
            let n = (keep - at).min(buf.len() as u64) as usize;
            state.fd.file.read_exact_at(&mut buf[..n], at).map_err(io)?;
            copy.file.write_all_at(&buf[..n], at).map_err(io)?;
            at += n as u64;
        }
        copy.file.set_len(state.len).map_err(io)?;
        state.fd = Arc::new(copy);
        state.shared = false;
        Ok(())
    }

    /// The file's length: the memfd's own, as kernel passthrough writes it without the daemon.
    pub fn len(&self) -> u64 {
        let state = self.state.lock();
        state.fd.file.metadata().map_or(state.len, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the file last changed: the memfd's mtime, which passthrough writes move too.
    pub fn mtime(&self) -> SystemTime {
        let state = self.state.lock();
        state
            .fd
            .file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(state.mtime)
    }

    /// [`WrittenFile::len`] and [`WrittenFile::mtime`] from one look at the memfd, for the
    /// attributes the kernel asks for on every lookup and listing page.
    pub fn len_and_mtime(&self) -> (u64, SystemTime) {
        let state = self.state.lock();
        match state.fd.file.metadata() {
            Ok(m) => (m.len(), m.modified().unwrap_or(state.mtime)),
            Err(_) => (state.len, state.mtime),
        }
    }

    /// Readies the file for a writer that the kernel lets write the memfd directly (FUSE
    /// passthrough): refuses past the memory limit, and moves the file off a memfd an image
    /// holds unless the kernel is bound to it. Returns the memfd to hand the kernel.
    pub fn open_for_passthrough(&self, write: bool) -> Result<Arc<Memfd>, WriteError> {
        let mut state = self.state.lock();
        if write {
            self.budget.check_room()?;
            self.unshare(&mut state, u64::MAX)?;
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
        let Ok(len) = state.fd.file.metadata().map(|m| m.len()) else {
            return;
        };
        if len > state.len {
            state.fd.charge_anyway(len - state.len);
        } else {
            state.fd.refund(state.len - len);
        }
        state.len = len;
        state.changes += 1;
    }

    /// Bytes `[offset, offset + size)`, shorter at the end; a hole reads as zeros. A truncate
    /// meanwhile gives a short read, as on tmpfs: the memfd says where its end is.
    pub fn read(&self, offset: u64, size: usize) -> Result<Vec<u8>, WriteError> {
        let fd = self.state.lock().fd.clone();
        let size = fd.file.metadata().map_or(size as u64, |m| {
            m.len().saturating_sub(offset).min(size as u64)
        });
        let mut buf = vec![0; size as usize];
        let mut got = 0;
        while got < buf.len() {
            let at = offset.saturating_add(got as u64);
            match fd.file.read_at(&mut buf[got..], at) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(WriteError::Io(e.to_string())),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Writes `data` at `offset`; a gap before it is a hole, as on tmpfs.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, WriteError> {
        self.write_acknowledging(offset, data, |_| {})?;
        Ok(data.len())
    }

    /// Writes `data` at `offset`, calling `acknowledge` with its length once nothing but the
    /// copy into the memfd is left: the room is taken (or ENOSPC returned, before any
    /// acknowledgement) and the file is off any image's memfd. The writer, told early, fills
    /// its next request while this thread copies; the file stays locked until the copy is
    /// done, so no read, write, close or `imgfs` request sees the file without these bytes.
    /// A copy that fails after the acknowledgement (only when the machine is out of memory)
    /// returns the error too, for a caller that has not answered yet, and fails every later
    /// write and close of the file with the reason, as a failed writeback does on a disk
    /// filesystem.
    pub fn write_acknowledging(
        &self,
        offset: u64,
        data: &[u8],
        acknowledge: impl FnOnce(usize),
    ) -> Result<(), WriteError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= MAX_FILE)
            .ok_or(WriteError::TooLarge)?;
        let mut state = self.state.lock();
        if let Some(lost) = &state.lost {
            return Err(WriteError::Io(lost.clone()));
        }
        self.unshare(&mut state, u64::MAX)?;
        let grow = end.saturating_sub(state.len);
        state.fd.charge(grow)?;
        acknowledge(data.len());
        if let Err(e) = state.fd.file.write_all_at(data, offset) {
            state.fd.refund(grow);
            // A partial write may have grown the memfd: put its length back.
            let _ = state.fd.file.set_len(state.len);
            let lost = format!(
                "{} bytes written at offset {offset} could not be stored: {e}",
                data.len()
            );
            log::error!("written file (inode {}): {lost}", self.ino);
            state.lost = Some(lost.clone());
            return Err(WriteError::Io(lost));
        }
        state.len = state.len.max(end);
        state.mtime = SystemTime::now();
        state.changes += 1;
        Ok(())
    }

    /// Why bytes acknowledged to a writer were lost, if they were.
    pub fn lost(&self) -> Option<String> {
        self.state.lock().lost.clone()
    }

    /// Truncates or extends (with a hole) to `len`.
    pub fn set_len(&self, len: u64) -> Result<(), WriteError> {
        if len > MAX_FILE {
            return Err(WriteError::TooLarge);
        }
        let mut state = self.state.lock();
        self.unshare(&mut state, len)?;
        if len > state.len {
            state.fd.charge(len - state.len)?;
        }
        if let Err(e) = state.fd.file.set_len(len) {
            if len > state.len {
                state.fd.refund(len - state.len);
            }
            return Err(WriteError::Io(e.to_string()));
        }
        if len < state.len {
            state.fd.refund(state.len - len);
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
        let _ = state.fd.file.set_modified(mtime);
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

    /// The path of directory `ino` below the root (empty for the root itself).
    pub fn dir_path(&self, ino: u64) -> Option<std::path::PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        loop {
            let parent = self.dirs.get(&at)?.parent;
            if parent == at {
                break;
            }
            let (name, _) = self
                .dir(parent)
                .ok()?
                .entries
                .iter()
                .find(|(_, node)| matches!(node, Node::Dir(d) if *d == at))?;
            names.push(name.clone());
            at = parent;
        }
        Some(names.iter().rev().collect())
    }

    /// Where `file` is named: its directory and its name there.
    pub fn place_of(&self, file: &Arc<WrittenFile>) -> Option<(u64, String)> {
        self.dirs.iter().find_map(|(ino, dir)| {
            dir.entries
                .iter()
                .find(|(_, node)| matches!(node, Node::File(f) if Arc::ptr_eq(f, file)))
                .map(|(name, _)| (*ino, name.clone()))
        })
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
                    return Err(WriteError::Invalid("a directory cannot move into itself"));
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
    fn a_write_is_acknowledged_after_its_room_is_taken_and_before_the_copy() {
        let mut t = tree(10);
        let a = t.create(1, "a", 2, true).unwrap();
        let mut told = None;
        a.write_acknowledging(0, b"12345678", |n| told = Some(n))
            .unwrap();
        assert_eq!(told, Some(8));
        // Refused past the limit: the writer hears ENOSPC, never an acknowledgement.
        let err = a
            .write_acknowledging(8, b"abc", |_| panic!("acknowledged past the limit"))
            .unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC);
        assert_eq!(a.read(0, 100).unwrap(), b"12345678");
    }

    #[test]
    fn bytes_lost_after_the_acknowledgement_fail_every_later_write_with_the_reason() {
        let mut t = tree(1 << 20);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(0, b"kept").unwrap();
        // A memfd the copy cannot write to, standing in for a machine out of memory.
        {
            let mut state = a.state.lock();
            let broken = Memfd {
                file: File::open("/dev/null").unwrap(),
                charged: AtomicU64::new(state.fd.charged()),
                budget: t.budget.clone(),
            };
            state.fd = Arc::new(broken);
        }
        let mut told = false;
        let err = a
            .write_acknowledging(4, b"lost", |_| told = true)
            .unwrap_err();
        assert!(told, "the writer was answered before the copy");
        assert_eq!(err.errno(), libc::EIO);
        let lost = a.lost().expect("the loss is recorded");
        assert!(lost.contains("4 bytes written at offset 4"), "{lost}");
        let err = a.write(8, b"more").unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(err.to_string().contains("could not be stored"), "{err}");
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
        let (held, _) = a.share();
        a.set_len(0).unwrap();
        a.write(0, b"two").unwrap();
        let mut old = vec![0; held.charged() as usize];
        held.file.read_exact_at(&mut old, 0).unwrap();
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
        let below = t.rename(1, "d", 5, "x", false).unwrap_err();
        assert_eq!(below.errno(), libc::EINVAL, "as rename(2) answers");
        assert_eq!(t.rmdir(1, "d").unwrap_err(), WriteError::NotEmpty);
    }

    #[test]
    fn an_images_memfd_counts_until_its_last_holder_lets_go_and_its_copy_counts_too() {
        let mut t = tree(25);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(0, &[1; 10]).unwrap();
        let (held, _) = a.share();
        // The change goes to a copy, which is memory too.
        a.write(0, b"x").unwrap();
        assert_eq!(t.budget.used(), 20);
        assert_eq!(a.write(10, &[2; 6]).unwrap_err().errno(), libc::ENOSPC);
        drop(t.unlink(1, "a").unwrap());
        drop(a);
        assert_eq!(t.budget.used(), 10, "the image's memfd still counts");
        drop(held);
        assert_eq!(t.budget.used(), 0);
    }

    #[test]
    fn a_share_taken_back_lets_the_next_change_go_to_the_same_memfd() {
        let mut t = tree(15);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(0, &[1; 10]).unwrap();
        let (held, was) = a.share();
        assert!(!was);
        a.unshare_unused(&held);
        drop(held);
        a.write(0, b"x").unwrap();
        assert_eq!(t.budget.used(), 10);
    }

    #[test]
    fn a_read_past_a_truncate_made_behind_the_daemon_is_short_not_an_error() {
        let mut t = tree(1 << 20);
        let a = t.create(1, "a", 2, true).unwrap();
        a.write(0, b"0123456789").unwrap();
        // As a passthrough writer would: the memfd shrinks without the daemon.
        a.state.lock().fd.file.set_len(4).unwrap();
        assert_eq!(a.read(2, 100).unwrap(), b"23");
        assert_eq!(a.read(8, 100).unwrap(), b"");
    }
}
