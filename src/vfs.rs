//! The kernel-facing tables: which versions the kernel holds by inode, its open file handles and
//! directory listings.
//!
//! This is the filesystem without the kernel: it answers lookups, opens and reads in plain
//! types over the [`Catalog`], and the FUSE adapter only translates. The catalog decides what
//! each name is; this module remembers what the kernel was told, so that an inode it learned
//! stays openable until it forgets it, whatever the catalog did since.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use crate::catalog::{Attr, Body, Catalog, FsError, ROOT_INO, Version, attr_of};
use crate::image::FileSource;
use crate::render::Chunk;
use crate::written::{Budget, Memfd, Node, Tree, WriteError, WrittenFile};

/// What an open file handle reads from.
enum Handle {
    Version(Arc<Version>),
    /// A written file, with its change count when opened or last flushed: a handle that
    /// changed it makes it an image when closed (flush, which close(2) waits for) or released,
    /// if it has an image's name.
    Written(Arc<WrittenFile>, AtomicU64, Served),
}

/// How the kernel serves a written file's handle.
#[derive(PartialEq)]
enum Served {
    /// Reads come to the daemon.
    Forwarded,
    /// Reads and writes come to the daemon.
    ForwardedWriter,
    /// The kernel reads the memfd directly (passthrough).
    Passthrough,
    /// The kernel reads and writes the memfd directly: the daemon never sees the writes, so
    /// the handle's close counts as a change.
    PassthroughWriter,
}

/// The suffixes of image files: a written file so named becomes an image when closed.
const IMAGE_SUFFIXES: [&str; 6] = [".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz"];

/// Where the daemon shows itself its written files under their names, for the image loader,
/// which knows a file's format by its name: a private directory with a subdirectory of links
/// to the memfds per load, removed once the load is done (the image keeps descriptors of its
/// own; a link left behind would name whatever file reuses the descriptor number).
struct Links {
    dir: tempfile::TempDir,
    next: u64,
}

/// Whether a written file's name is a pair's header (`.hdr`, `.hdr.gz`), the file an image
/// of the pair is loaded from.
fn is_pair_header(name: &str) -> bool {
    name.ends_with(".hdr") || name.ends_with(".hdr.gz")
}

/// The other file of a pair (`x.hdr` for `x.img`, keeping `.gz`), or None for a `.nii`.
fn pair_partner(name: &str) -> Option<String> {
    let (base, gz) = match name.strip_suffix(".gz") {
        Some(base) => (base, ".gz"),
        None => (name, ""),
    };
    if let Some(stem) = base.strip_suffix(".hdr") {
        Some(format!("{stem}.img{gz}"))
    } else {
        base.strip_suffix(".img")
            .map(|stem| format!("{stem}.hdr{gz}"))
    }
}

/// A directory listing: file names with their attributes, and the versions they name, kept
/// alive while the listing is paged through so that every inode it hands out can be opened.
pub struct Listing {
    pub files: Vec<(String, Attr)>,
    /// For each of `files`, the written file it is, if it is one: its size and mtime are read
    /// again for each page of the listing (see [`Listing::entry`]).
    written_files: Vec<Option<Arc<WrittenFile>>>,
    _versions: Vec<Arc<Version>>,
    _written: Vec<Node>,
}

impl Listing {
    /// Entry `i` with its attributes as they are now. A version never changes, but a written
    /// file may have been written or truncated since the directory was opened, and the kernel
    /// takes the size in a listing as newer than any write that ended before it asked for the
    /// page: a size from the opening would undo those writes in its view (a reader then sees
    /// the file cut short, or zeros past its end).
    pub fn entry(&self, i: usize) -> Option<(&str, Attr)> {
        let (name, attr) = self.files.get(i)?;
        let mut attr = *attr;
        if let Some(Some(file)) = self.written_files.get(i) {
            (attr.size, attr.mtime) = file.len_and_mtime();
        }
        Some((name, attr))
    }
}

/// How an open file is to be served.
#[derive(Debug)]
pub enum Opened {
    /// Hand the kernel this file: reads go to it directly (FUSE passthrough).
    Passthrough { fh: u64, source: Arc<FileSource> },
    /// Reads come to [`Vfs::read`].
    Rendered { fh: u64 },
    /// A file written in the mount: with a memfd, hand the kernel that (passthrough: reads,
    /// writes and mappings go to it directly); without, reads and writes come to [`Vfs::read`]
    /// and [`Vfs::write`].
    Written {
        fh: u64,
        backing: Option<Arc<Memfd>>,
    },
}

/// The kernel's view of one mount.
pub struct Vfs {
    catalog: Arc<Catalog>,
    /// The versions the kernel knows by inode, with its lookup count for each. A version stays
    /// openable until the kernel forgets it: a name looked up just before an edit still names
    /// the version it was looked up as, and opening it reads that whole version.
    kernel_refs: Mutex<HashMap<u64, (Arc<Version>, u64)>>,
    handles: RwLock<HashMap<u64, Handle>>,
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    /// Files and directories written in the mount; None on a read-only mount.
    tree: Option<Mutex<Tree>>,
    /// The written nodes the kernel knows by inode, with its lookup count for each: an
    /// unlinked file stays readable through the inode while the kernel holds it.
    written_refs: Mutex<HashMap<u64, (Node, u64)>>,
    links: Mutex<Option<Links>>,
    /// Whether written files are handed to the kernel by passthrough (set by the adapter once
    /// the kernel agreed to passthrough).
    written_passthrough: std::sync::atomic::AtomicBool,
}

impl Vfs {
    /// A read-only view of the catalog.
    pub fn new(catalog: Arc<Catalog>) -> Vfs {
        Vfs::with_writing(catalog, None)
    }

    /// A view of the catalog where, with a budget, the user may also write files and
    /// directories, holding at most the budget's limit of bytes.
    pub fn with_writing(catalog: Arc<Catalog>, budget: Option<Arc<Budget>>) -> Vfs {
        Vfs {
            catalog,
            kernel_refs: Mutex::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tree: budget.map(|b| Mutex::new(Tree::new(ROOT_INO, b))),
            written_refs: Mutex::new(HashMap::new()),
            links: Mutex::new(None),
            written_passthrough: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on, written files are opened for kernel passthrough to their memfds.
    pub fn pass_written_through(&self) {
        self.written_passthrough.store(true, Ordering::Relaxed);
    }

    /// Opens a written file: a handle, and with passthrough the memfd for the kernel.
    fn open_written(
        &self,
        file: Arc<WrittenFile>,
        write: bool,
        changes: u64,
    ) -> Result<(u64, Option<Arc<Memfd>>), FsError> {
        let passthrough = self.written_passthrough.load(Ordering::Relaxed);
        let mut handles = self.handles.write();
        let backing = if passthrough {
            Some(file.open_for_passthrough(write)?)
        } else {
            None
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(
            fh,
            Handle::Written(
                file,
                AtomicU64::new(changes),
                match (passthrough, write) {
                    (false, false) => Served::Forwarded,
                    (false, true) => Served::ForwardedWriter,
                    (true, false) => Served::Passthrough,
                    (true, true) => Served::PassthroughWriter,
                },
            ),
        );
        Ok((fh, backing))
    }

    pub fn is_writable(&self) -> bool {
        self.tree.is_some()
    }

    /// Bytes held by written files and the limit on them (statfs), if writable.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let tree = self.tree.as_ref()?.lock();
        Some((tree.budget.used(), tree.budget.limit))
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn lookup(&self, parent: u64, file_name: &OsStr) -> Result<Attr, FsError> {
        if let Some(node) = self.written_node(parent, file_name)?
            && !self.image_shadows(parent, file_name)
        {
            return Ok(self.written_learned(node));
        }
        if parent != ROOT_INO {
            return Err(FsError::NotFound);
        }
        let version = self.catalog.current(file_name).ok_or(FsError::NotFound)?;
        self.kernel_learned(&version);
        Ok(attr_of(&version))
    }

    /// Whether, in the root, the image served as `file_name` hides the written file of that
    /// name: it does once the image made from that file was edited (it is no longer the
    /// file's bytes); until then both are the same bytes and the written file is shown.
    fn image_shadows(&self, parent: u64, file_name: &OsStr) -> bool {
        parent == ROOT_INO && self.catalog.written_state(file_name) == Some(false)
    }

    /// The written node `name` in `parent`, if the mount is writable and has one.
    fn written_node(&self, parent: u64, name: &OsStr) -> Result<Option<Node>, FsError> {
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        let name = name.to_str().ok_or(FsError::NotFound)?;
        match tree.lock().lookup(parent, name) {
            Ok(node) => Ok(Some(node)),
            Err(WriteError::NotFound) => Ok(None),
            Err(WriteError::NotDir) if parent == ROOT_INO => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn written_learned(&self, node: Node) -> Attr {
        let attr = self.written_attr(&node);
        self.written_refs
            .lock()
            .entry(node.ino())
            .or_insert_with(|| (node, 0))
            .1 += 1;
        attr
    }

    fn written_attr(&self, node: &Node) -> Attr {
        match node {
            Node::File(f) => {
                let (size, mtime) = f.len_and_mtime();
                Attr {
                    ino: f.ino,
                    size,
                    mtime,
                    is_dir: false,
                    writable: true,
                }
            }
            Node::Dir(ino) => {
                let mtime = self
                    .tree
                    .as_ref()
                    .and_then(|t| t.lock().dir(*ino).ok().and_then(|d| d.mtime));
                Attr {
                    ino: *ino,
                    size: 0,
                    mtime: mtime.unwrap_or_else(SystemTime::now),
                    is_dir: true,
                    writable: true,
                }
            }
        }
    }

    /// A written node the kernel knows by inode.
    fn written(&self, ino: u64) -> Option<Node> {
        self.written_refs.lock().get(&ino).map(|(n, _)| n.clone())
    }

    fn written_file(&self, ino: u64) -> Result<Arc<WrittenFile>, FsError> {
        match self.written(ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(WriteError::IsDir.into()),
            None => Err(FsError::Stale),
        }
    }

    fn tree(&self) -> Result<&Mutex<Tree>, FsError> {
        self.tree
            .as_ref()
            .ok_or(FsError::Denied("the mount is read-only"))
    }

    /// Refuses a name in the root that is an image's served file: such a file is never
    /// written through, removed or replaced from the kernel's side.
    fn check_not_image(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        // An image made from a written file may be written again: that makes its next version.
        if parent == ROOT_INO
            && self.catalog.written_state(name).is_none()
            && self.catalog.current(name).is_some()
        {
            return Err(FsError::Denied(
                "an image's served file is never written through; write a new name",
            ));
        }
        Ok(())
    }

    fn utf8(name: &OsStr) -> Result<&str, FsError> {
        name.to_str()
            .ok_or(FsError::Denied("file names in the mount must be UTF-8"))
    }

    /// Creates (or, unless `exclusive`, opens) a file and opens it; with passthrough, also
    /// returns the memfd to hand the kernel.
    #[allow(clippy::type_complexity)]
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        exclusive: bool,
    ) -> Result<(Attr, u64, Option<Arc<Memfd>>), FsError> {
        self.check_not_image(parent, name)?;
        let file = {
            let mut tree = self.tree()?.lock();
            if self.written_passthrough.load(Ordering::Relaxed) {
                tree.budget.check_room()?;
            }
            let ino = self.catalog.allocate_ino();
            tree.create(parent, Self::utf8(name)?, ino, exclusive)?
        };
        let attr = self.written_learned(Node::File(file.clone()));
        // A new file counts as changed: an empty `.nii` is reported as not an image.
        let changes = file.changes().wrapping_sub(1);
        let (fh, backing) = self.open_written(file, true, changes)?;
        Ok((attr, fh, backing))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        self.check_not_image(parent, name)?;
        let ino = self.catalog.allocate_ino();
        self.tree()?.lock().mkdir(parent, Self::utf8(name)?, ino)?;
        Ok(self.written_learned(Node::Dir(ino)))
    }

    /// Removes what `name` shows. A written file goes, and an image made from it that is
    /// still its bytes goes with it. Where the name shows an image made from written files
    /// (edited, or served as `NAME.nii` for a `.nii.gz` or a pair), that image goes, with a
    /// written file of the same name under it. An added image's file is refused.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        self.check_not_image(parent, name)?;
        let path = self.written_path(parent, name)?;
        if parent == ROOT_INO
            && let Some(image) = self.image_shown_instead_of_a_written_file(name)?
        {
            self.catalog.remove(&image).map_err(|_| FsError::NotFound)?;
            if self
                .tree()?
                .lock()
                .unlink(parent, Self::utf8(name)?)
                .is_ok()
            {
                self.catalog.written_file_moved(&path, None);
            }
            return Ok(());
        }
        self.tree()?.lock().unlink(parent, Self::utf8(name)?)?;
        self.catalog.written_file_moved(&path, None);
        Ok(())
    }

    /// Where `name` in written directory `parent` is, as the user sees it in the mount.
    fn written_path(&self, parent: u64, name: &OsStr) -> Result<std::path::PathBuf, FsError> {
        let dir = self
            .tree()?
            .lock()
            .dir_path(parent)
            .ok_or(FsError::NotFound)?;
        Ok(self.catalog.mount_dir().join(dir).join(name))
    }

    /// The image made from written files that a name in the root shows, where that is not the
    /// written file of the name itself: the edited version shadowing it, or the `NAME.nii`
    /// served for a written `.nii.gz` or pair.
    fn image_shown_instead_of_a_written_file(
        &self,
        name: &OsStr,
    ) -> Result<Option<String>, FsError> {
        if self.catalog.written_state(name).is_none() {
            return Ok(None);
        }
        if self.written_node(ROOT_INO, name)?.is_some() && !self.image_shadows(ROOT_INO, name) {
            return Ok(None);
        }
        Ok(crate::catalog::name_from_path(std::path::Path::new(name)))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        self.check_not_image(parent, name)?;
        self.tree()?.lock().rmdir(parent, Self::utf8(name)?)?;
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), FsError> {
        self.check_not_image(parent, name)?;
        self.check_not_image(new_parent, new_name)?;
        let (from, to) = (
            self.written_path(parent, name)?,
            self.written_path(new_parent, new_name)?,
        );
        let moved = {
            let mut tree = self.tree()?.lock();
            tree.rename(
                parent,
                Self::utf8(name)?,
                new_parent,
                Self::utf8(new_name)?,
                no_replace,
            )?;
            // Just renamed there: found, unless a concurrent unlink got there first.
            tree.lookup(new_parent, Self::utf8(new_name)?).ok()
        };
        match moved {
            // Renamed into an image's name after it was written (a tool that writes a
            // temporary file, then renames it into place): it becomes an image now. One still
            // open for writing becomes one when that writer closes it.
            Some(Node::File(file)) => {
                self.catalog.written_file_moved(&from, Some(&to));
                if !self.open_for_writing(&file) {
                    self.adopt(&file);
                }
            }
            // Its files keep their names, and the images made from them: only paths change.
            Some(Node::Dir(_)) => self.catalog.written_dir_moved(&from, &to),
            None => {}
        }
        Ok(())
    }

    fn open_for_writing(&self, file: &Arc<WrittenFile>) -> bool {
        self.handles.read().values().any(|h| {
            matches!(h, Handle::Written(f, _, served)
                if Arc::ptr_eq(f, file)
                    && matches!(served, Served::ForwardedWriter | Served::PassthroughWriter))
        })
    }

    /// Changes a written file's size or mtime (truncate, utimes); an image's file refuses.
    pub fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        mtime: Option<SystemTime>,
    ) -> Result<Attr, FsError> {
        let Some(node) = self.written(ino) else {
            if size.is_some() {
                return Err(FsError::Denied(
                    "an image's served file is never written through",
                ));
            }
            return self.getattr(ino);
        };
        if let Node::File(file) = &node {
            if let Some(size) = size {
                file.set_len(size)?;
            }
            if let Some(mtime) = mtime {
                file.set_mtime(mtime);
            }
        }
        Ok(self.written_attr(&node))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        self.write_acknowledging(fh, offset, data, |_| {})?;
        Ok(data.len())
    }

    /// Writes through a handle, calling `acknowledge` as soon as the write can no longer
    /// fail for a reason the writer must hear (see [`WrittenFile::write_acknowledging`]).
    pub fn write_acknowledging(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        acknowledge: impl FnOnce(usize),
    ) -> Result<(), FsError> {
        let file = match self.handles.read().get(&fh) {
            Some(Handle::Written(file, ..)) => file.clone(),
            Some(Handle::Version(_)) => return Err(FsError::Denied("opened for reading")),
            None => return Err(FsError::Stale),
        };
        Ok(file.write_acknowledging(offset, data, acknowledge)?)
    }

    fn kernel_learned(&self, version: &Arc<Version>) {
        let mut refs = self.kernel_refs.lock();
        refs.entry(version.ino)
            .or_insert_with(|| (version.clone(), 0))
            .1 += 1;
        self.publish_held(refs.len());
    }

    fn publish_held(&self, held: usize) {
        self.catalog
            .stats
            .kernel_held_versions
            .store(held as u64, Ordering::Relaxed);
    }

    /// The kernel was handed a listed file's inode with its attributes (`readdirplus`): it now
    /// holds one more lookup of it.
    pub fn listed(&self, ino: u64) {
        if let Some(version) = self.catalog.version(ino) {
            self.kernel_learned(&version);
        } else if let Some(node) = self.written(ino) {
            self.written_learned(node);
        }
    }

    /// The kernel dropped `count` lookups of an inode; at none, the version may go.
    pub fn forget(&self, ino: u64, count: u64) {
        {
            let mut written = self.written_refs.lock();
            if let Some((_, held)) = written.get_mut(&ino) {
                *held = held.saturating_sub(count);
                if *held == 0 {
                    written.remove(&ino);
                }
                return;
            }
        }
        let mut refs = self.kernel_refs.lock();
        if let Some((_, held)) = refs.get_mut(&ino) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                refs.remove(&ino);
            }
        }
        self.publish_held(refs.len());
    }

    /// How many versions the kernel still holds by inode (for tests and `stats`).
    pub fn kernel_held_versions(&self) -> usize {
        self.kernel_refs.lock().len()
    }

    /// Whether `ino` may be accessed so: files are readable, never executable; directories
    /// (the root, written ones) can be entered. Whether a file can be written is the open's
    /// to say.
    pub fn access(&self, ino: u64, execute: bool) -> Result<(), FsError> {
        let attr = self.getattr(ino)?;
        if execute && !attr.is_dir {
            return Err(FsError::Denied("files in the mount are never executable"));
        }
        Ok(())
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(Attr {
                ino,
                size: 0,
                mtime: SystemTime::now(),
                is_dir: true,
                writable: self.is_writable(),
            });
        }
        if let Some(node) = self.written(ino) {
            return Ok(self.written_attr(&node));
        }
        self.catalog
            .version(ino)
            .map(|v| attr_of(&v))
            .ok_or(FsError::NotFound)
    }

    /// Opens a directory: a snapshot of the listing (`.`, `..`, then in the root each image's
    /// file with its current version's attributes, then the written files), which the reads
    /// of this handle page through.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let this = self.getattr(ino)?;
        if !this.is_dir {
            return Err(WriteError::NotDir.into());
        }
        let (parent, written) = match &self.tree {
            Some(tree) => {
                let tree = tree.lock();
                match tree.dir(ino) {
                    Ok(dir) => (
                        dir.parent,
                        dir.entries
                            .iter()
                            .map(|(k, n)| (k.clone(), n.clone()))
                            .collect(),
                    ),
                    Err(_) => (ROOT_INO, Vec::new()),
                }
            }
            None => (ROOT_INO, Vec::new()),
        };
        let up = self.getattr(parent).unwrap_or(this);
        let current = if ino == ROOT_INO {
            self.catalog.current_versions()
        } else {
            Vec::new()
        };
        let mut files = vec![(".".to_string(), this), ("..".to_string(), up)];
        let mut versions = Vec::with_capacity(current.len());
        // A name both have is listed once, as lookup would find it.
        let shadowed = |name: &str| self.image_shadows(ino, OsStr::new(name));
        let written_names: std::collections::HashSet<&str> =
            written.iter().map(|(n, _)| n.as_str()).collect();
        for (file_name, version) in current {
            if written_names.contains(file_name.as_str()) && !shadowed(&file_name) {
                continue;
            }
            files.push((file_name, attr_of(&version)));
            versions.push(version);
        }
        let mut written_files = vec![None; files.len()];
        let mut nodes = Vec::with_capacity(written.len());
        for (name, node) in written {
            if ino == ROOT_INO && shadowed(&name) {
                continue;
            }
            files.push((name, self.written_attr(&node)));
            written_files.push(match &node {
                Node::File(file) => Some(file.clone()),
                Node::Dir(_) => None,
            });
            nodes.push(node);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.listings.lock().insert(
            fh,
            Arc::new(Listing {
                files,
                written_files,
                _versions: versions,
                _written: nodes,
            }),
        );
        Ok(fh)
    }

    /// The listing of an open directory handle.
    pub fn listing(&self, fh: u64) -> Result<Arc<Listing>, FsError> {
        self.listings.lock().get(&fh).cloned().ok_or(FsError::Stale)
    }

    pub fn releasedir(&self, fh: u64) {
        self.listings.lock().remove(&fh);
    }

    /// Opens a file; `write` asks for writing, which only written files allow.
    pub fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        if self.written(ino).is_some() {
            let file = self.written_file(ino)?;
            let changes = file.changes();
            let (fh, backing) = self.open_written(file, write, changes)?;
            return Ok(Opened::Written { fh, backing });
        }
        let version = self.catalog.version(ino).ok_or(FsError::Stale)?;
        if write {
            return Err(if self.is_writable() {
                FsError::Denied("an image's served file is never written through")
            } else {
                FsError::Denied("the mount is read-only")
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let stats = &self.catalog.stats;
        let opened = match &version.body {
            Body::Original(source) => {
                // The file may have changed since lookup; a passthrough open would serve it.
                if let Err(e) = source.check_unchanged() {
                    log::warn!("refusing a stale passthrough open: {e}");
                    return Err(FsError::Stale);
                }
                stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                Opened::Passthrough {
                    fh,
                    source: source.clone(),
                }
            }
            _ => {
                stats.rendered_opens.fetch_add(1, Ordering::Relaxed);
                Opened::Rendered { fh }
            }
        };
        self.handles.write().insert(fh, Handle::Version(version));
        Ok(opened)
    }

    /// Called when passthrough could not be set up: reads of this handle come here instead.
    pub fn passthrough_refused(&self) {
        let stats = &self.catalog.stats;
        stats.passthrough_opens.fetch_sub(1, Ordering::Relaxed);
        stats.rendered_opens.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, fh: u64, offset: u64, size: usize) -> Result<Chunk, FsError> {
        let version = match self.handles.read().get(&fh) {
            Some(Handle::Version(v)) => v.clone(),
            Some(Handle::Written(file, ..)) => {
                return Ok(Chunk::Owned(file.read(offset, size)?));
            }
            None => return Err(FsError::Stale),
        };
        let stats = &self.catalog.stats;
        let counter = if version.is_passthrough() {
            &stats.forwarded_reads
        } else {
            &stats.rendered_reads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::fault::panic_if_asked(|| self.catalog.name_of_version(version.ino));
        version.read(offset, size)
    }

    /// A close of a descriptor of this handle: a written file it changed becomes an image now,
    /// so that the image is there when close(2) returns.
    ///
    /// Fails if bytes acknowledged to a writer of the file were lost (close(2) then fails).
    pub fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (file, changed) = match self.handles.read().get(&fh) {
            Some(Handle::Written(file, seen, served)) => {
                if *served == Served::PassthroughWriter {
                    file.settle();
                }
                let now = file.changes();
                (file.clone(), seen.swap(now, Ordering::Relaxed) != now)
            }
            _ => return Ok(()),
        };
        if let Some(lost) = file.lost() {
            return Err(FsError::Io(lost));
        }
        if changed {
            self.adopt(&file);
        }
        Ok(())
    }

    /// fsync(2): written files are memory, so nothing is left to store; fails as
    /// [`Vfs::flush`] does if acknowledged bytes were lost.
    pub fn fsync(&self, fh: u64) -> Result<(), FsError> {
        match self.handles.read().get(&fh) {
            Some(Handle::Written(file, ..)) => {
                file.lost().map_or(Ok(()), |lost| Err(FsError::Io(lost)))
            }
            _ => Ok(()),
        }
    }

    pub fn release(&self, fh: u64) {
        // Writes through a mapping may come after the last close.
        let _ = self.flush(fh);
        if let Some(Handle::Written(file, _, served)) = self.handles.write().remove(&fh)
            && matches!(served, Served::Passthrough | Served::PassthroughWriter)
        {
            file.unbind();
        }
    }

    /// Makes a written file in the root an image if it has an image's name (both files of a
    /// pair written); one that does not parse stays a plain file, and `ls` says why.
    fn adopt(&self, file: &Arc<WrittenFile>) {
        let Some(tree) = &self.tree else { return };
        let (dir_path, name, partner) = {
            let tree = tree.lock();
            let Some((dir, name)) = tree.place_of(file) else {
                return;
            };
            if !IMAGE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                return;
            }
            let (Ok(entries), Some(dir_path)) = (tree.dir(dir), tree.dir_path(dir)) else {
                return;
            };
            let partner = pair_partner(&name).map(|p| (entries.entries.get(&p).cloned(), p));
            (self.catalog.mount_dir().join(dir_path), name, partner)
        };
        let mut members = vec![(name.clone(), file.clone())];
        match partner {
            Some((Some(Node::File(other)), other_name)) => members.push((other_name, other)),
            // The other half is not written yet: its close makes the pair an image.
            Some(_) => return,
            None => {}
        }
        let mount_file = dir_path.join(&name);
        let header_name = members
            .iter()
            .map(|(n, _)| n.clone())
            .find(|n| is_pair_header(n))
            .unwrap_or_else(|| name.clone());
        let image_name = crate::catalog::name_from_path(std::path::Path::new(&header_name));
        // Each member's memfd is marked as an image's before the load, so that no change can
        // reach the bytes being loaded; the mark is taken back if no image is made.
        let shared: Vec<(&Arc<WrittenFile>, Arc<Memfd>, bool)> = members
            .iter()
            .map(|(_, file)| {
                let (memfd, was) = file.share();
                (file, memfd, was)
            })
            .collect();
        let outcome = image_name
            .ok_or_else(|| "no image name can be taken from it".to_string())
            .and_then(|image_name| {
                let held: Vec<(String, Arc<Memfd>)> = members
                    .iter()
                    .zip(&shared)
                    .map(|((name, _), (_, memfd, _))| (name.clone(), memfd.clone()))
                    .collect();
                let image = self.load_linked(&held, &header_name, &dir_path)?;
                self.catalog
                    .adopt(
                        &image_name,
                        image,
                        dir_path.join(&header_name),
                        held.into_iter().map(|(_, memfd)| memfd).collect(),
                    )
                    .map_err(|e| e.to_string())
            });
        if outcome.is_err() {
            for (file, memfd, was) in &shared {
                if !was {
                    file.unshare_unused(memfd);
                }
            }
        }
        match outcome {
            Ok(summary) => log::info!("{} is now image '{}'", mount_file.display(), summary.name),
            Err(why) => {
                log::info!("{} stays a plain file: {why}", mount_file.display());
                self.catalog.note_plain(mount_file, why);
            }
        }
    }

    #[cfg(test)]
    fn links_dir(&self) -> String {
        self.links
            .lock()
            .as_ref()
            .map(|l| l.dir.path().display().to_string())
            .unwrap_or_default()
    }

    /// Loads the image `header_name` from memfds shown under their names (links in a fresh
    /// private directory, removed once the load is done: the image checks and reads the
    /// memfds through descriptors of its own). An error names the files where the user sees
    /// them, in `shown_in`, not the links the loader read.
    fn load_linked(
        &self,
        members: &[(String, Arc<Memfd>)],
        header_name: &str,
        shown_in: &std::path::Path,
    ) -> Result<crate::image::Image, String> {
        use std::os::fd::AsRawFd;
        let dir = {
            let mut links = self.links.lock();
            if links.is_none() {
                let base = crate::control::control_dir().map_err(|e| e.to_string())?;
                // A fresh 0700 directory made here: nothing in it was planted by another user.
                let dir = tempfile::Builder::new()
                    .prefix("written-")
                    .tempdir_in(base)
                    .map_err(|e| e.to_string())?;
                *links = Some(Links { dir, next: 0 });
            }
            let links = links.as_mut().expect("made above");
            links.next += 1;
            links.dir.path().join(links.next.to_string())
        };
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let loaded = (|| {
            let mut pins = Vec::new();
            for (name, memfd) in members {
                let target = format!("/proc/{}/fd/{}", std::process::id(), memfd.file.as_raw_fd());
                let link = dir.join(name);
                std::os::unix::fs::symlink(target, &link).map_err(|e| e.to_string())?;
                pins.push((link, memfd.file.try_clone().map_err(|e| e.to_string())?));
            }
            let image = self
                .catalog
                .load(&dir.join(header_name))
                .map_err(|e| e.to_string())?;
            if let Some(origin) = image.origin() {
                origin.pin(pins);
            }
            Ok(image)
        })();
        // Only links made above are in it: removing them follows none.
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            log::warn!("{}: {e}", dir.display());
        }
        loaded.map_err(|why: String| {
            why.replace(&dir.display().to_string(), &shown_in.display().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ByteOrder, Flavor, Header, affine};
    use crate::image::{Image, VoxelBuffer};
    use std::path::{Path, PathBuf};

    fn catalog_with(name: &str) -> Vfs {
        let data = VoxelBuffer::from_vec(&[2, 2, 2], &[1.0f32; 8]);
        let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
        let image = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
        let catalog = Catalog::new(PathBuf::from("/nowhere"));
        catalog.insert(name, image).unwrap();
        Vfs::new(Arc::new(catalog))
    }

    fn descrip_of(catalog: &Vfs, fh: u64) -> String {
        let bytes = catalog.read(fh, 0, 348).unwrap();
        Header::parse(&bytes).unwrap().descrip()
    }

    #[test]
    fn a_looked_up_version_stays_openable_after_an_edit_until_the_kernel_forgets_it() {
        let catalog = catalog_with("a");
        let old = catalog.lookup(ROOT_INO, OsStr::new("a.nii")).unwrap();
        catalog
            .catalog()
            .edit("a", |img| img.set_field("descrip", "new"))
            .unwrap();
        let new = catalog.lookup(ROOT_INO, OsStr::new("a.nii")).unwrap();
        assert_ne!(old.ino, new.ino);
        assert_eq!(catalog.kernel_held_versions(), 2);

        let Opened::Rendered { fh } = catalog.open(old.ino, false).unwrap() else {
            panic!("an in-memory image is rendered");
        };
        assert_eq!(descrip_of(&catalog, fh), "");
        catalog.release(fh);

        catalog.forget(old.ino, 1);
        assert_eq!(catalog.open(old.ino, false).unwrap_err(), FsError::Stale);
        assert_eq!(catalog.kernel_held_versions(), 1);
        let Opened::Rendered { fh } = catalog.open(new.ino, false).unwrap() else {
            panic!("an in-memory image is rendered");
        };
        assert_eq!(descrip_of(&catalog, fh), "new");
    }

    #[test]
    fn lookups_are_counted_and_forgotten_together() {
        let catalog = catalog_with("a");
        let fh = catalog.opendir(ROOT_INO).unwrap();
        let ino = catalog.listing(fh).unwrap().files[2].1.ino;
        catalog.listed(ino);
        catalog.releasedir(fh);
        catalog.lookup(ROOT_INO, OsStr::new("a.nii")).unwrap();
        catalog
            .catalog()
            .edit("a", |img| img.set_field("descrip", "x"))
            .unwrap();
        catalog.forget(ino, 1);
        let opened = catalog.open(ino, false).expect("one lookup is still held");
        let Opened::Rendered { fh } = opened else {
            panic!("an in-memory image is rendered");
        };
        catalog.release(fh);
        catalog.forget(ino, 1);
        assert_eq!(catalog.open(ino, false).unwrap_err(), FsError::Stale);
        catalog.forget(ino, 5);
        assert_eq!(catalog.kernel_held_versions(), 0);
    }
    #[test]
    fn written_files_sit_beside_images_and_an_images_file_is_never_written() {
        let read_only = catalog_with("a");
        let refused = read_only.create(ROOT_INO, OsStr::new("x.txt"), true);
        assert_eq!(refused.unwrap_err().errno(), libc::EACCES);

        let catalog = Vfs::with_writing(read_only.catalog().clone(), Some(Budget::new(1 << 20)));
        let (attr, fh, _) = catalog.create(ROOT_INO, OsStr::new("x.txt"), true).unwrap();
        assert_eq!(catalog.write(fh, 0, b"abc").unwrap(), 3);
        assert_eq!(&*catalog.read(fh, 0, 10).unwrap(), b"abc");
        catalog.release(fh);
        assert_eq!(catalog.getattr(attr.ino).unwrap().size, 3);

        let listing = catalog.listing(catalog.opendir(ROOT_INO).unwrap()).unwrap();
        let names: Vec<&str> = listing.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".", "..", "a.nii", "x.txt"]);

        let image = catalog.lookup(ROOT_INO, OsStr::new("a.nii")).unwrap();
        for refused in [
            catalog.open(image.ino, true).map(drop),
            catalog
                .create(ROOT_INO, OsStr::new("a.nii"), false)
                .map(drop),
            catalog.unlink(ROOT_INO, OsStr::new("a.nii")),
            catalog.rename(
                ROOT_INO,
                OsStr::new("x.txt"),
                ROOT_INO,
                OsStr::new("a.nii"),
                false,
            ),
            catalog.setattr(image.ino, Some(0), None).map(drop),
        ] {
            assert_eq!(refused.unwrap_err().errno(), libc::EACCES);
        }
        assert_eq!(catalog.getattr(image.ino).unwrap().size, image.size);
    }

    /// A small NIfTI file's bytes, as the mount renders one.
    fn nifti_bytes() -> Vec<u8> {
        let vfs = catalog_with("src");
        let attr = vfs.lookup(ROOT_INO, OsStr::new("src.nii")).unwrap();
        let Opened::Rendered { fh } = vfs.open(attr.ino, false).unwrap() else {
            panic!("an in-memory image is rendered");
        };
        vfs.read(fh, 0, 1 << 20).unwrap().to_vec()
    }

    fn writable(limit: u64) -> (Vfs, Arc<Budget>) {
        let budget = Budget::new(limit);
        let catalog = Arc::new(Catalog::new(PathBuf::from("/nowhere")));
        (Vfs::with_writing(catalog, Some(budget.clone())), budget)
    }

    /// Writes `bytes` at the start of `name` in the root and closes it; the file's inode.
    fn write_file(vfs: &Vfs, name: &str, bytes: &[u8]) -> Result<u64, FsError> {
        let (attr, fh, _) = vfs.create(ROOT_INO, OsStr::new(name), false)?;
        let written = vfs.write(fh, 0, bytes);
        vfs.release(fh);
        written.map(|_| attr.ino)
    }

    /// Memfds of written files this process has open.
    fn open_memfds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains("imgfs-written"))
            .count()
    }

    #[test]
    fn an_outputs_memory_counts_while_an_image_holds_it_and_is_freed_when_both_are_gone() {
        let bytes = nifti_bytes();
        let n = bytes.len() as u64;
        let (vfs, budget) = writable(3 * n);
        let ino = write_file(&vfs, "out.nii", &bytes).unwrap();
        assert_eq!(vfs.catalog().names(), ["out"]);
        assert_eq!(budget.used(), n, "the file and its image share one memfd");

        // A rewrite goes to a copy while the image holds the first version: both count.
        let (_, fh, _) = vfs.create(ROOT_INO, OsStr::new("out.nii"), false).unwrap();
        vfs.write(fh, 0, &bytes).unwrap();
        assert_eq!(budget.used(), 2 * n);
        vfs.release(fh);
        assert_eq!(budget.used(), n, "the replaced image let its memfd go");

        vfs.catalog().remove("out").unwrap();
        vfs.unlink(ROOT_INO, OsStr::new("out.nii")).unwrap();
        vfs.forget(ino, u64::MAX);
        assert_eq!(budget.used(), 0);
        // Counted per process: only meaningful when this test has the process to itself, as
        // under nextest; `cargo test` runs other tests' memfds beside it.
        if std::env::var_os("NEXTEST_RUN_ID").is_some() {
            assert_eq!(open_memfds(), 0);
        }
        let links = vfs.links_dir();
        assert_eq!(std::fs::read_dir(&links).unwrap().count(), 0, "{links}");
    }

    #[test]
    fn a_file_that_does_not_parse_is_written_again_in_place_not_copied() {
        let (vfs, budget) = writable(150);
        write_file(&vfs, "bad.nii", &[b'x'; 100]).unwrap();
        assert_eq!(vfs.catalog().plain_files().len(), 1);
        write_file(&vfs, "bad.nii", b"y").expect("no copy, so no more memory");
        assert_eq!(budget.used(), 100);
    }

    fn gz_nifti_bytes() -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&nifti_bytes()).unwrap();
        gz.finish().unwrap()
    }

    fn image_names(vfs: &Vfs) -> Vec<String> {
        let mut names = vfs.catalog().names();
        names.sort();
        names
    }

    #[test]
    fn an_unedited_output_is_its_file_renamed_and_removed_with_it() {
        let (vfs, budget) = writable(1 << 20);
        let ino = write_file(&vfs, "y.nii.gz", &gz_nifti_bytes()).unwrap();
        let catalog = vfs.catalog();
        assert_eq!(catalog.path("y").unwrap(), Path::new("/nowhere/y.nii.gz"));

        let (root, name) = (ROOT_INO, OsStr::new);
        vfs.rename(root, name("y.nii.gz"), root, name("z.nii.gz"), false)
            .unwrap();
        assert_eq!(image_names(&vfs), ["z"], "the image moved with its file");
        assert_eq!(catalog.path("z").unwrap(), Path::new("/nowhere/z.nii.gz"));
        assert!(
            vfs.lookup(root, name("y.nii")).is_err(),
            "nothing is left of y"
        );

        vfs.unlink(root, name("z.nii.gz")).unwrap();
        assert!(image_names(&vfs).is_empty(), "the image went with its file");
        assert!(vfs.lookup(root, name("z.nii")).is_err());
        vfs.forget(ino, u64::MAX); // the kernel lets the unlinked inode go
        assert_eq!(budget.used(), 0, "and so did its memory");
    }

    #[test]
    fn a_file_renamed_into_an_images_name_after_it_was_written_becomes_an_image() {
        let (vfs, _) = writable(1 << 20);
        write_file(&vfs, "out.tmp", &nifti_bytes()).unwrap();
        assert!(image_names(&vfs).is_empty());
        let (root, name) = (ROOT_INO, OsStr::new);
        // Still open for writing: its writer's close makes it an image, not the rename.
        let (_, fh, _) = vfs.create(root, name("out.tmp"), false).unwrap();
        vfs.rename(root, name("out.tmp"), root, name("out.nii"), false)
            .unwrap();
        assert!(image_names(&vfs).is_empty());
        vfs.write(fh, 0, &nifti_bytes()).unwrap();
        vfs.release(fh);
        assert_eq!(image_names(&vfs), ["out"]);
        vfs.rename(root, name("out.nii"), root, name("res.nii"), false)
            .unwrap();
        assert_eq!(image_names(&vfs), ["res"]);
    }

    #[test]
    fn an_edited_output_stays_when_its_file_moves_and_goes_when_its_name_is_removed() {
        let (vfs, _) = writable(1 << 20);
        let (root, name) = (ROOT_INO, OsStr::new);
        write_file(&vfs, "e.nii.gz", &gz_nifti_bytes()).unwrap();
        let catalog = vfs.catalog();
        catalog
            .edit("e", |image| image.set_field("descrip", "edited"))
            .unwrap();
        vfs.rename(root, name("e.nii.gz"), root, name("f.bin"), false)
            .unwrap();
        assert_eq!(
            image_names(&vfs),
            ["e"],
            "edits are more than the file: kept"
        );
        assert_eq!(catalog.path("e").unwrap(), Path::new("/nowhere/e.nii"));
        // `e.nii` shows the edited image, made from written files: removing the name
        // removes it, as on tmpfs.
        vfs.unlink(root, name("e.nii")).unwrap();
        assert!(image_names(&vfs).is_empty());
        assert!(
            vfs.lookup(root, name("f.bin")).is_ok(),
            "the file was left alone"
        );

        // An edited `.nii` hides the written file of its name; removing the name removes both.
        write_file(&vfs, "s.nii", &nifti_bytes()).unwrap();
        catalog
            .edit("s", |image| image.set_field("descrip", "edited"))
            .unwrap();
        vfs.unlink(root, name("s.nii")).unwrap();
        assert!(image_names(&vfs).is_empty());
        assert!(vfs.lookup(root, name("s.nii")).is_err());
    }

    #[test]
    fn an_output_in_a_subdirectory_becomes_an_image_served_in_the_root() {
        let (vfs, budget) = writable(1 << 20);
        let (root, name) = (ROOT_INO, OsStr::new);
        let out = vfs.mkdir(root, name("out")).unwrap().ino;
        let (attr, fh, _) = vfs.create(out, name("x.nii"), false).unwrap();
        vfs.write(fh, 0, &nifti_bytes()).unwrap();
        vfs.release(fh);
        let catalog = vfs.catalog();
        assert_eq!(image_names(&vfs), ["x"]);
        assert_eq!(catalog.path("x").unwrap(), Path::new("/nowhere/out/x.nii"));
        assert_eq!(
            vfs.lookup(root, name("x.nii")).unwrap().size,
            attr_size(&vfs, out, "x.nii")
        );

        // The directory moves: the image stays, naming the new path.
        vfs.rename(root, name("out"), root, name("res"), false)
            .unwrap();
        assert_eq!(catalog.path("x").unwrap(), Path::new("/nowhere/res/x.nii"));

        // Another directory's file of the same stem stays a plain file, saying why.
        let other = vfs.mkdir(root, name("other")).unwrap().ino;
        let (_, fh, _) = vfs.create(other, name("x.nii"), false).unwrap();
        vfs.write(fh, 0, &nifti_bytes()).unwrap();
        vfs.release(fh);
        assert_eq!(catalog.path("x").unwrap(), Path::new("/nowhere/res/x.nii"));
        let plain = catalog.plain_files();
        assert_eq!(plain[0].0, Path::new("/nowhere/other/x.nii"), "{plain:?}");
        assert!(plain[0].1.contains("exists already"), "{plain:?}");

        // Removed with its file, as in the root.
        let other_ino = vfs.lookup(other, name("x.nii")).unwrap().ino;
        vfs.unlink(out, name("x.nii")).unwrap();
        assert!(image_names(&vfs).is_empty());
        vfs.unlink(other, name("x.nii")).unwrap();
        vfs.forget(attr.ino, u64::MAX);
        vfs.forget(other_ino, u64::MAX);
        assert_eq!(budget.used(), 0);
    }

    fn attr_size(vfs: &Vfs, dir: u64, name: &str) -> u64 {
        vfs.lookup(dir, OsStr::new(name)).unwrap().size
    }

    #[test]
    fn a_listing_gives_a_written_files_size_as_it_is_when_the_page_is_read() {
        let (vfs, _) = writable(1 << 20);
        write_file(&vfs, "grows.bin", b"12").unwrap();
        let listing = vfs.listing(vfs.opendir(ROOT_INO).unwrap()).unwrap();
        let (_, fh, _) = vfs
            .create(ROOT_INO, OsStr::new("grows.bin"), false)
            .unwrap();
        vfs.write(fh, 2, b"345").unwrap();
        vfs.release(fh);
        let (name, attr) = listing.entry(2).unwrap();
        assert_eq!((name, attr.size), ("grows.bin", 5));
    }

    #[test]
    fn a_plain_files_reason_names_it_where_it_was_written() {
        let (vfs, _) = writable(1 << 20);
        let out = vfs.mkdir(ROOT_INO, OsStr::new("out")).unwrap().ino;
        let (_, fh, _) = vfs.create(out, OsStr::new("broken.nii"), false).unwrap();
        vfs.write(fh, 0, b"not a header").unwrap();
        vfs.release(fh);
        let plain = vfs.catalog().plain_files();
        assert_eq!(plain[0].0, Path::new("/nowhere/out/broken.nii"));
        assert!(
            plain[0].1.starts_with("/nowhere/out/broken.nii: "),
            "{plain:?}"
        );
    }

    #[test]
    fn an_output_never_replaces_an_image_of_its_name_from_elsewhere() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&nifti_bytes()).unwrap();
        let (vfs, _) = writable(1 << 20);
        let data = VoxelBuffer::from_vec(&[2, 2, 2], &[1.0f32; 8]);
        let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
        let image = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
        vfs.catalog().insert("t", image).unwrap();
        write_file(&vfs, "t.nii.gz", &gz.finish().unwrap()).unwrap();
        let summary = vfs.catalog().summary("t").unwrap();
        assert!(!summary.state.contains("written"), "{summary:?}");
        let plain = vfs.catalog().plain_files();
        assert!(plain[0].1.contains("exists already"), "{plain:?}");
    }

    #[test]
    fn an_images_memory_is_its_arrays_and_the_memfds_it_was_made_from() {
        let vfs = catalog_with("a");
        assert_eq!(vfs.catalog().summary("a").unwrap().memory_bytes, 8 * 4);
        let bytes = nifti_bytes();
        let (vfs, _) = writable(1 << 20);
        write_file(&vfs, "out.nii", &bytes).unwrap();
        let summary = vfs.catalog().summary("out").unwrap();
        assert_eq!(summary.memory_bytes, bytes.len() as u64);
    }
}
