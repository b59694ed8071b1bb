//! The FUSE adapter: translates kernel requests into [`Vfs`] calls and their results into
//! replies. Nothing else lives here; the only state it keeps is the kernel's own resource, the
//! passthrough backing ids.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier,
    OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;

use crate::catalog::{Attr, Catalog, FsError, Invalidate, ROOT_INO};
use crate::fusermount::Watcher;
use crate::image::FileSource;
use crate::vfs::{Opened, Vfs};

/// How long the kernel may cache a name or attributes; changes are also invalidated at once.
const TTL: Duration = Duration::from_secs(1);

/// The root's attributes are never cached: when the daemon dies, fusermount3's auto-unmount
/// unmounts only if a stat of the mount point fails with ENOTCONN, and a cached answer would
/// leave a dead mount behind.
const ROOT_TTL: Duration = Duration::ZERO;

/// Mount settings.
#[derive(Clone, Debug, Default)]
pub struct MountSettings {
    /// Let other users see the mount (`allow_other`); otherwise only the mounting user can.
    pub allow_other: bool,
    /// Never use kernel passthrough: clean files are served by forwarding reads.
    pub no_passthrough: bool,
    /// Mount read-only (`ro`): the kernel refuses every write.
    pub read_only: bool,
}

/// Backing files registered with the kernel, one per inode while any handle is open.
#[derive(Default)]
struct Backing {
    /// With the identity (st_ino) of the file registered: a written file may have moved to
    /// another memfd since, and then needs a backing id of its own.
    by_ino: HashMap<u64, (Weak<BackingId>, u64)>,
    by_fh: HashMap<u64, Arc<BackingId>>,
    /// Inodes whose original the kernel refused as a backing file (one on another FUSE
    /// filesystem, say): they are served by forwarded reads for good, as the kernel fails an
    /// inode's opens that mix the two modes. Other inodes keep passthrough.
    forwarded: HashSet<u64>,
}

pub struct ImageFs {
    vfs: Vfs,
    allow_passthrough: bool,
    passthrough: AtomicBool,
    backing: Mutex<Backing>,
    uid: u32,
    gid: u32,
}

impl ImageFs {
    pub fn new(catalog: Arc<Catalog>, allow_passthrough: bool) -> ImageFs {
        ImageFs::with_vfs(Vfs::new(catalog), allow_passthrough)
    }

    pub fn with_vfs(vfs: Vfs, allow_passthrough: bool) -> ImageFs {
        ImageFs {
            vfs,
            allow_passthrough,
            passthrough: AtomicBool::new(false),
            backing: Mutex::new(Backing::default()),
            // SAFETY: getuid and getgid cannot fail and touch no memory.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
        }
    }

    fn file_attr(&self, attr: &Attr) -> FileAttr {
        let (kind, perm, nlink) = match (attr.is_dir, attr.writable) {
            (true, false) => (FileType::Directory, 0o555, 2),
            (true, true) => (FileType::Directory, 0o755, 2),
            (false, false) => (FileType::RegularFile, 0o444, 1),
            (false, true) => (FileType::RegularFile, 0o644, 1),
        };
        FileAttr {
            ino: INodeNo(attr.ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    /// The backing id for a passthrough open of `ino`, or None if this inode is served by
    /// forwarded reads. Decided once per inode, under the lock, so concurrent opens agree.
    fn open_passthrough(
        &self,
        ino: u64,
        fh: u64,
        source: &FileSource,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        self.bind_backing(
            ino,
            fh,
            &source.file,
            &source.path.display().to_string(),
            |f| reply.open_backing(f),
        )
    }

    /// The backing id of `ino` (registered with `register` on its first open), kept for `fh`;
    /// None if the kernel refused it, for good: the inode is then served by forwarding.
    fn bind_backing(
        &self,
        ino: u64,
        fh: u64,
        file: &std::fs::File,
        what: &str,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        use std::os::unix::fs::MetadataExt;
        let key = file.metadata().map_or(0, |m| m.ino());
        let mut backing = self.backing.lock();
        if backing.forwarded.contains(&ino) {
            return None;
        }
        let known = backing
            .by_ino
            .get(&ino)
            .filter(|(_, k)| *k == key)
            .and_then(|(id, _)| id.upgrade());
        let id = match known {
            Some(id) => id,
            None => match register(file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    backing.by_ino.insert(ino, (Arc::downgrade(&id), key));
                    id
                }
                Err(e) => {
                    log::warn!(
                        "{what}: the kernel refused it as a passthrough backing file ({e}); the \
                         file served from it (inode {ino}) gets forwarded reads instead",
                    );
                    backing.forwarded.insert(ino);
                    return None;
                }
            },
        };
        backing.by_fh.insert(fh, id.clone());
        Some(id)
    }
}

/// Runs one call of the kernel-free side for a kernel request. A panic in it fails this request alone with
/// EIO and is logged; uncaught, it would end a FUSE worker thread, and after a few of those the
/// whole mount. The catalog's locks do not poison (parking_lot), so other requests go on.
fn caught<T>(op: &str, call: impl FnOnce() -> Result<T, FsError>) -> Result<T, Errno> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(|e| errno(&e)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!("{op}: internal error ({message}); this request fails with EIO");
            Err(Errno::EIO)
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let enabled = self.allow_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        log::info!("FUSE passthrough in use: {enabled}");
        if enabled {
            // A written file's memfd is a backing file like any: writes, reads and mappings
            // then go to it without a round trip through this daemon.
            self.vfs.pass_written_through();
        }
        // `ls -l` of a large mount: attributes come with the listing, not one lookup per file.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // Rendered files are read sequentially in bulk: the largest readahead the kernel
        // allows means fewer, larger read requests.
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
            log::info!("max_readahead {max}");
        }
        self.passthrough.store(enabled, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match caught("lookup", || self.vfs.lookup(parent.0, name)) {
            Ok(attr) => reply.entry(&TTL, &self.file_attr(&attr), fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _ = caught("forget", || {
            self.vfs.forget(ino.0, nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match caught("getattr", || self.vfs.getattr(ino.0)) {
            Ok(attr) if attr.is_dir => reply.attr(&ROOT_TTL, &self.file_attr(&attr)),
            Ok(attr) => reply.attr(&TTL, &self.file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match caught("open", || self.vfs.open(ino.0, write)) {
            Ok(Opened::Passthrough { fh, source }) => {
                if self.passthrough.load(Ordering::Relaxed)
                    && let Some(id) = self.open_passthrough(ino.0, fh, &source, &reply)
                {
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                }
                self.vfs.passthrough_refused();
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            // A version never changes, so the kernel's cached pages stay valid across opens.
            Ok(Opened::Rendered { fh }) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            // Every change to a written file comes through the kernel, so its cached pages are
            // always current: keep them across opens (a read-back then needs no daemon). Not
            // direct_io, so that shared writable mappings (MRtrix3 writes through one) work.
            Ok(Opened::Written { fh, backing }) => {
                if let Some(memfd) = backing
                    && let Some(id) =
                        self.bind_backing(ino.0, fh, &memfd.file, "a written file", |f| {
                            reply.open_backing(f)
                        })
                {
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                }
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let exclusive = flags & libc::O_EXCL != 0;
        match caught("create", || self.vfs.create(parent.0, name, exclusive)) {
            Ok((attr, fh, backing)) => {
                let file_attr = self.file_attr(&attr);
                if let Some(memfd) = backing
                    && let Some(id) =
                        self.bind_backing(attr.ino, fh, &memfd.file, "a written file", |f| {
                            reply.open_backing(f)
                        })
                {
                    return reply.created_passthrough(
                        &TTL,
                        &file_attr,
                        fuser::Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &id,
                    );
                }
                reply.created(
                    &TTL,
                    &file_attr,
                    fuser::Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Answered before the bytes are copied in: the writer's next request and this copy
        // then run side by side (see `WrittenFile::write_acknowledging`).
        let mut reply = Some(reply);
        let written = caught("write", || {
            self.vfs.write_acknowledging(fh.0, offset, data, |n| {
                if let Some(reply) = reply.take() {
                    reply.written(n as u32);
                }
            })
        });
        if let (Err(e), Some(reply)) = (written, reply) {
            reply.error(e);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => std::time::SystemTime::now(),
        });
        match caught("setattr", || self.vfs.setattr(ino.0, size, mtime)) {
            Ok(attr) => reply.attr(&TTL, &self.file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match caught("mkdir", || self.vfs.mkdir(parent.0, name)) {
            Ok(attr) => reply.entry(&TTL, &self.file_attr(&attr), fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answering_under_directory_lock(|| {
            match caught("unlink", || self.vfs.unlink(parent.0, name)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match caught("rmdir", || self.vfs.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        answering_under_directory_lock(|| {
            match caught("rename", || {
                self.vfs
                    .rename(parent.0, name, newparent.0, newname, no_replace)
            }) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BLOCK: u64 = 4096;
        let (used, limit) = self.vfs.usage().unwrap_or((0, 0));
        let blocks = limit / BLOCK;
        let free = limit.saturating_sub(used) / BLOCK;
        reply.statfs(blocks, free, free, 0, 0, BLOCK as u32, 255, BLOCK as u32);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let read = caught("read", || {
            self.vfs
                .read(fh.0, offset, size as usize)
                .inspect_err(|e| log::warn!("read of handle {} failed: {e}", fh.0))
        });
        match read {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = caught("release", || {
            self.vfs.release(fh.0);
            Ok(())
        });
        self.backing.lock().by_fh.remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match caught("opendir", || self.vfs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match caught("readdir", || self.vfs.listing(fh.0)) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        for (i, (name, attr)) in (offset as usize..).map_while(|i| Some((i, listing.entry(i)?))) {
            let kind = self.file_attr(&attr).kind;
            if reply.add(INodeNo(attr.ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match caught("readdir", || self.vfs.listing(fh.0)) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        for (i, (name, attr)) in (offset as usize..).map_while(|i| Some((i, listing.entry(i)?))) {
            let file_attr = self.file_attr(&attr);
            if reply.add(
                file_attr.ino,
                (i + 1) as u64,
                name,
                &TTL,
                &file_attr,
                fuser::Generation(0),
            ) {
                break;
            }
            // The kernel counts a lookup for every entry but `.` and `..`.
            if name != "." && name != ".." {
                let _ = caught("readdirplus", || {
                    self.vfs.listed(attr.ino);
                    Ok(())
                });
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _ = caught("releasedir", || {
            self.vfs.releasedir(fh.0);
            Ok(())
        });
        reply.ok();
    }

    // Requests that ordinary use sends (every close, `ls -l`, Python's isatty check, `cp`'s
    // SEEK_DATA), answered here so that fuser does not log each as "Not Implemented". Written
    // files are in memory already: as on tmpfs, there is nothing to flush or sync.

    fn flush(&self, _: &Request, _: INodeNo, fh: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        match caught("flush", || self.vfs.flush(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _: &Request, _: INodeNo, fh: FileHandle, _: bool, reply: ReplyEmpty) {
        match caught("fsync", || self.vfs.fsync(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    /// No file has extended attributes. ENOSYS, answered once, makes the kernel stop asking and
    /// answer "not supported" itself; any other answer costs a round trip per file, and
    /// `ls -l` asks twice for every file (10,000 images: 0.6 s instead of 40 ms).
    fn getxattr(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    /// As for getxattr.
    fn listxattr(&self, _: &Request, _: INodeNo, _: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let execute = mask.contains(AccessFlags::X_OK);
        match caught("access", || self.vfs.access(ino.0, execute)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Not a terminal, nor anything else an ioctl could address.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: IoctlFlags,
        _: u32,
        _: &[u8],
        _: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    /// ENOSYS tells the kernel to seek by itself from now on (every byte is data), silently.
    fn lseek(&self, _: &Request, _: INodeNo, _: FileHandle, _: i64, _: i32, reply: ReplyLseek) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel copies by ordinary reads instead, and stops asking.
    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: u64,
        _: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel takes every file as always ready, and stops asking.
    #[allow(clippy::too_many_arguments)]
    fn poll(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: PollNotifier,
        _: PollEvents,
        _: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }
}

/// Tells the kernel to drop a name's cached binding.
struct NotifierInvalidate {
    notifier: Notifier,
}

thread_local! {
    /// Invalidations held back while this thread answers a request for which the kernel holds
    /// the directory's lock (unlink, rename): the kernel takes that lock to invalidate a name,
    /// so sending one before the answer would wait for the request it is part of, forever.
    static HELD_BACK: std::cell::RefCell<Option<Vec<(Notifier, String)>>> =
        const { std::cell::RefCell::new(None) };
}

impl NotifierInvalidate {
    fn send(notifier: &Notifier, file_name: &str) {
        // ENOENT only means the kernel had not cached the name.
        let _ = notifier.inval_entry(INodeNo(ROOT_INO), OsStr::new(file_name));
    }
}

impl Invalidate for NotifierInvalidate {
    fn name_changed(&self, file_name: &str) {
        let held = HELD_BACK.with_borrow_mut(|held| match held {
            Some(held) => {
                held.push((self.notifier.clone(), file_name.to_string()));
                true
            }
            None => false,
        });
        if !held {
            NotifierInvalidate::send(&self.notifier, file_name);
        }
    }
}

/// Runs `handle` (which answers a request the kernel holds the directory's lock for) with
/// invalidations held back, then sends them: once answered, the kernel lets the lock go.
fn answering_under_directory_lock(handle: impl FnOnce()) {
    HELD_BACK.with_borrow_mut(|held| *held = Some(Vec::new()));
    handle();
    let held = HELD_BACK.with_borrow_mut(Option::take).unwrap_or_default();
    for (notifier, file_name) in held {
        NotifierInvalidate::send(&notifier, &file_name);
    }
}

/// Mounts `dir` through `fusermount3` (see [`crate::fusermount`] for why) and wraps the FUSE
/// device in a session serving `vfs`; the caller runs or spawns the session. Keep the watcher
/// for as long as the session serves.
pub fn mount(
    vfs: Vfs,
    dir: &Path,
    settings: &MountSettings,
) -> std::io::Result<(Session<ImageFs>, Watcher)> {
    let catalog = vfs.catalog().clone();
    let mut options = vec![
        if settings.read_only { "ro" } else { "rw" },
        "nosuid",
        "nodev",
        "noatime",
        "fsname=imgfs",
        "subtype=imgfs",
    ];
    // Without allow_other the kernel itself refuses every other user, root included.
    let acl = if settings.allow_other {
        options.push("allow_other");
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let (device, watcher) = crate::fusermount::mount(dir, &options)?;
    let mut config = Config::default();
    config.acl = acl;
    config.n_threads = Some(4);
    config.clone_fd = true;
    let session = Session::from_fd(
        ImageFs::with_vfs(vfs, !settings.no_passthrough),
        device,
        acl,
        config,
    )?;
    raise_readahead(dir);
    catalog.set_invalidator(Arc::new(NotifierInvalidate {
        notifier: session.notifier(),
    }));
    Ok((session, watcher))
}

/// Raises the mount's readahead window (the kernel's default for FUSE is 128 KiB) to 1 MiB,
/// so that sequential reads of rendered files arrive as 1 MiB requests instead of 128 KiB
/// ones: fewer round trips through the daemon. Not more: a request is at most 1 MiB anyway,
/// and a larger window only makes the kernel ask for data nobody wants yet. A reader that maps
/// the file (MRtrix3) gets the whole window around its first fault, so a header read of a new
/// converted version made the daemon convert 4 MiB with a 4 MiB window. Measured (`mrinfo`,
/// new int16 version of a 513 MiB image, bench medians): 6.6-6.7 ms with 4 MiB, 4.7-5.1 ms
/// with 1 MiB (a plain file: 3.1 ms); first full reads were the same with both. Needs root;
/// without it the default stays.
fn raise_readahead(dir: &Path) {
    if let Some(device) = crate::mountinfo::device_of(dir) {
        let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
        if let Err(e) = std::fs::write(&knob, "1024") {
            log::info!("readahead stays at the default ({knob}: {e})");
        }
    }
}
