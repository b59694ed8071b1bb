//! The catalog: the named images of one mount and the file version each one is served as.
//!
//! This is the image registry and its edits. Each change to an image gives it a new version
//! with its own inode, so a reader that opened a version keeps reading it to the end while a
//! later open sees the new one; the kernel is told to forget the old name binding. Which
//! versions the kernel holds, its open handles and listings are [`crate::vfs`]'s.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use crate::format;
use crate::format::gzindex::GzCache;
use crate::image::{DirtyState, FileSource, Image, ImageError};
use crate::render::{Chunk, Rendering};
use crate::written::Memfd;

/// The suffix every served file has.
pub const SUFFIX: &str = ".nii";
const MAX_NAME: usize = 200;

/// The inode of the mount's root directory.
pub const ROOT_INO: u64 = 1;

/// Why a request about a named image failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no image named '{0}'")]
    UnknownName(String),
    #[error("an image named '{0}' exists already")]
    NameTaken(String),
    #[error("bad image name {0:?}: {1}")]
    BadName(String, &'static str),
    #[error("image '{name}': {source}")]
    Image { name: String, source: ImageError },
    #[error("{0}")]
    Format(#[from] format::FormatError),
}

/// Why a kernel request failed, with the errno it becomes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FsError {
    #[error("not found")]
    NotFound,
    #[error("stale: the image changed since this file was looked up")]
    Stale,
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Denied(&'static str),
    #[error(transparent)]
    Written(#[from] crate::written::WriteError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Stale => libc::ESTALE,
            FsError::Io(_) => libc::EIO,
            FsError::Denied(_) => libc::EACCES,
            FsError::Written(e) => e.errno(),
        }
    }
}

/// Checks an image name: one path component of safe characters.
pub fn check_name(name: &str) -> Result<(), CatalogError> {
    let bad = |why| Err(CatalogError::BadName(name.to_string(), why));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
    {
        return bad("only letters, digits, '.', '_', '-' and '+' are allowed");
    }
    Ok(())
}

/// The name an image takes from its file: the file name without its image suffixes.
pub fn name_from_path(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let base = file.strip_suffix(".gz").unwrap_or(file);
    let stem = [".nii", ".hdr", ".img"]
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    Some(stem.to_string())
}

/// What a served file is made from.
#[derive(Debug)]
pub enum Body {
    /// The original `.nii`, unchanged: passed through.
    Original(Arc<FileSource>),
    /// Rendered by byte range.
    Rendered(Rendering),
    /// Cannot be produced; reads fail with this reason.
    Broken(String),
}

/// One immutable version of an image's file.
#[derive(Debug)]
pub struct Version {
    pub ino: u64,
    pub generation: u64,
    pub size: u64,
    pub mtime: SystemTime,
    pub body: Body,
}

impl Version {
    pub fn is_passthrough(&self) -> bool {
        matches!(self.body, Body::Original(_))
    }

    /// Bytes `[offset, offset + size)` of this version.
    pub fn read(&self, offset: u64, size: usize) -> Result<Chunk, FsError> {
        match &self.body {
            Body::Original(source) => {
                let end = (offset + size as u64).min(self.size);
                if offset >= end {
                    return Ok(Chunk::Owned(Vec::new()));
                }
                let mut buf = vec![0; (end - offset) as usize];
                use std::os::unix::fs::FileExt;
                source
                    .file
                    .read_exact_at(&mut buf, offset)
                    .and_then(|()| source.check_unchanged())
                    .map_err(|e| FsError::Io(e.to_string()))?;
                Ok(Chunk::Owned(buf))
            }
            Body::Rendered(r) => r
                .read_at(offset, size)
                .map_err(|e| FsError::Io(e.to_string())),
            Body::Broken(why) => Err(FsError::Io(why.clone())),
        }
    }
}

/// A file's attributes, as the kernel needs them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub mtime: SystemTime,
    pub is_dir: bool,
    /// Written in the mount: its owner may change it.
    pub writable: bool,
}

/// Told when a name's file changes, so the kernel's caches can be invalidated.
pub trait Invalidate: Send + Sync {
    fn name_changed(&self, file_name: &str);
}

/// Counters that show how files were served.
#[derive(Debug, Default)]
pub struct Stats {
    /// Opens of clean originals handed to the kernel.
    pub passthrough_opens: AtomicU64,
    pub rendered_opens: AtomicU64,
    pub forwarded_reads: AtomicU64,
    pub rendered_reads: AtomicU64,
    /// Versions the kernel holds by inode (kept by [`crate::vfs`]).
    pub kernel_held_versions: AtomicU64,
}

/// One line of `imgfs ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub name: String,
    pub state: String,
    pub clean: bool,
    pub reasons: Vec<String>,
    pub format: String,
    pub shape: Vec<u64>,
    pub dtype: String,
    pub size: u64,
    pub origin: Option<PathBuf>,
    pub served_as: &'static str,
    pub path: PathBuf,
    /// Bytes the daemon holds for this image: arrays in memory, and the memfds of the files
    /// written in the mount it was made from.
    pub memory_bytes: u64,
}

struct Entry {
    image: Image,
    version: Arc<Version>,
    /// The memfds of the files written in the mount this image was made from: their memory
    /// counts against the mount's limit while the image holds it.
    held: Vec<Arc<Memfd>>,
}

/// The images of one mount.
pub struct Catalog {
    mount_dir: PathBuf,
    entries: RwLock<BTreeMap<String, Arc<Mutex<Entry>>>>,
    versions: Mutex<HashMap<u64, Weak<Version>>>,
    next_ino: AtomicU64,
    invalidate: RwLock<Option<Arc<dyn Invalidate>>>,
    /// Decompressed segments of every compressed original of the mount, under one budget.
    gz_cache: Arc<GzCache>,
    /// Images made from files written in the mount, with the file each was written as (None
    /// once that file was removed or moved away): its "original" is that file's memory, not a
    /// file on disk.
    written: Mutex<HashMap<String, Option<PathBuf>>>,
    /// Files written in the mount with an image's name that did not become images, and why.
    plain: Mutex<BTreeMap<PathBuf, String>>,
    pub stats: Stats,
}

/// The default budget of a mount's decompressed gzip segments: enough for a reader of a few
/// images at once to hit, small beside one decompressed image.
pub const DEFAULT_GZIP_CACHE: u64 = 32 << 20;

impl Catalog {
    pub fn new(mount_dir: PathBuf) -> Catalog {
        Catalog::with_gzip_cache(mount_dir, None)
    }

    /// A catalog whose compressed originals share a cache of `gzip_cache_bytes` (default
    /// [`DEFAULT_GZIP_CACHE`]).
    pub fn with_gzip_cache(mount_dir: PathBuf, gzip_cache_bytes: Option<u64>) -> Catalog {
        Catalog {
            gz_cache: Arc::new(GzCache::new(gzip_cache_bytes.unwrap_or(DEFAULT_GZIP_CACHE))),
            mount_dir,
            entries: RwLock::new(BTreeMap::new()),
            versions: Mutex::new(HashMap::new()),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            invalidate: RwLock::new(None),
            written: Mutex::new(HashMap::new()),
            plain: Mutex::new(BTreeMap::new()),
            stats: Stats::default(),
        }
    }

    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    pub fn set_invalidator(&self, invalidate: Arc<dyn Invalidate>) {
        *self.invalidate.write() = Some(invalidate);
    }

    fn build_version(&self, image: &Image) -> Arc<Version> {
        let state = image.state();
        let single_nii = image
            .origin()
            .is_some_and(|o| o.file_map.is_single() && !o.file_map.compressed);
        let original = image
            .original_data()
            .filter(|_| state.is_clean() && single_nii)
            .or_else(|| image.served_file());
        let (body, size) = match original {
            Some(source) => (Body::Original(source.clone()), source.seen.size),
            None => match Rendering::of(image) {
                Ok(r) => {
                    let size = r.size();
                    (Body::Rendered(r), size)
                }
                Err(why) => (Body::Broken(why), 0),
            },
        };
        let mtime = match image.origin() {
            Some(origin) if image.generation() == 0 => origin.mtime(),
            _ => image.changed_at(),
        };
        let version = Arc::new(Version {
            ino: self.next_ino.fetch_add(1, Ordering::Relaxed),
            generation: image.generation(),
            size,
            mtime,
            body,
        });
        let mut versions = self.versions.lock();
        if versions.len() > 64 && versions.len() > 2 * self.entries.read().len() {
            versions.retain(|_, v| v.strong_count() > 0);
        }
        versions.insert(version.ino, Arc::downgrade(&version));
        version
    }

    /// Brings an entry's version up to date with its image; true if it changed. The caller
    /// tells the kernel with [`Catalog::notify`] once it has let go of the entry, unless it is
    /// answering a lookup, whose answer already carries the new version.
    fn refresh(&self, entry: &mut Entry) -> bool {
        // A handed-over file is served while the image is unchanged: a new generation.
        let stale_original = entry.version.is_passthrough()
            && entry.image.served_file().is_none()
            && !entry.image.state().is_clean();
        if entry.image.generation() == entry.version.generation && !stale_original {
            return false;
        }
        entry.version = self.build_version(&entry.image);
        true
    }

    /// Makes the kernel forget the name's cached binding, so the next open finds the new
    /// version. Never called with an entry locked: the kernel takes the directory lock, which a
    /// lookup waiting for that entry may hold.
    fn notify(&self, name: &str) {
        if let Some(inv) = self.invalidate.read().as_ref() {
            inv.name_changed(&format!("{name}{SUFFIX}"));
        }
    }

    /// Locks an entry, refreshes it, runs `f`, and tells the kernel after unlocking.
    fn with_fresh<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> Result<R, CatalogError> {
        let entry = self.entry(name)?;
        let (result, changed) = {
            let mut entry = entry.lock();
            let refreshed = self.refresh(&mut entry);
            let before = entry.version.ino;
            let result = f(&mut entry);
            let changed = refreshed || self.refresh(&mut entry) || entry.version.ino != before;
            (result, changed)
        };
        if changed {
            self.notify(name);
        }
        Ok(result)
    }

    fn entry(&self, name: &str) -> Result<Arc<Mutex<Entry>>, CatalogError> {
        self.entries
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownName(name.to_string()))
    }

    /// Loads an image from `path`; a compressed one shares the mount's gzip cache.
    pub fn load(&self, path: &Path) -> Result<Image, ImageError> {
        Image::load_with(path, &self.gz_cache)
    }

    /// Loads an image's header from a file and serves it as `name`.
    pub fn add(&self, name: &str, path: &Path) -> Result<Summary, CatalogError> {
        check_name(name)?;
        if self.entries.read().contains_key(name) {
            return Err(CatalogError::NameTaken(name.to_string()));
        }
        let image = Image::load_with(path, &self.gz_cache).map_err(|source| match source {
            ImageError::Format(e) => CatalogError::Format(e),
            source => CatalogError::Image {
                name: name.to_string(),
                source,
            },
        })?;
        self.insert(name, image)
    }

    /// Serves an image held in memory as `name`.
    pub fn insert(&self, name: &str, image: Image) -> Result<Summary, CatalogError> {
        check_name(name)?;
        let version = self.build_version(&image);
        let summary = {
            let entry = Entry {
                image,
                version,
                held: Vec::new(),
            };
            let summary = self.summarize(name, &entry);
            let mut entries = self.entries.write();
            if entries.contains_key(name) {
                return Err(CatalogError::NameTaken(name.to_string()));
            }
            entries.insert(name.to_string(), Arc::new(Mutex::new(entry)));
            summary
        };
        self.notify(name);
        Ok(summary)
    }

    /// Serves `image` as `name`, replacing the image of that name if there is one.
    pub fn replace(&self, name: &str, image: Image) -> Result<Summary, CatalogError> {
        check_name(name)?;
        if !self.entries.read().contains_key(name) {
            return self.insert(name, image);
        }
        self.with_fresh(name, |entry| {
            entry.version = self.build_version(&image);
            entry.image = image;
            entry.held.clear();
            self.summarize(name, entry)
        })
    }

    /// Serves an image made from a file written in the mount as `file` (holding the memfds
    /// `held`), replacing an earlier version made the same way; an image of that name from
    /// elsewhere is left alone. The check and the change are one step: an image added under
    /// the name meanwhile is never replaced.
    pub fn adopt(
        &self,
        name: &str,
        image: Image,
        file: PathBuf,
        held: Vec<Arc<Memfd>>,
    ) -> Result<Summary, CatalogError> {
        check_name(name)?;
        let version = self.build_version(&image);
        let entry = Arc::new(Mutex::new(Entry {
            image,
            version,
            held,
        }));
        {
            let mut entries = self.entries.write();
            let mut written = self.written.lock();
            // Another file's image (added, or written elsewhere in the mount) keeps its name;
            // a file written again, or one written where an image's file was removed, takes it.
            let from_elsewhere = match written.get(name) {
                None => entries.contains_key(name),
                Some(Some(earlier)) => *earlier != file,
                Some(None) => false,
            };
            if from_elsewhere {
                return Err(CatalogError::NameTaken(name.to_string()));
            }
            // A new entry, not the old one changed in place: whoever holds the old one only
            // sees a version no longer served, as after `rm`.
            entries.insert(name.to_string(), entry.clone());
            written.insert(name.to_string(), Some(file.clone()));
        }
        self.plain.lock().remove(&file);
        self.notify(name);
        let entry = entry.lock();
        Ok(self.summarize(name, &entry))
    }

    /// A file written in the mount was removed (`to` None) or renamed to `to`, replacing any
    /// file there. An image made from it (or from the file it replaced) that is still those
    /// bytes was that file, and goes with it, as a file goes on tmpfs: nothing is lost, and
    /// its memory is freed with the file's. An edited one is more than the file: it stays,
    /// naming the file's new path, or with none its served file.
    pub fn written_file_moved(&self, from: &Path, to: Option<&Path>) {
        let affected: Vec<(String, bool)> = self
            .written
            .lock()
            .iter()
            .filter_map(|(name, file)| match file.as_deref() {
                Some(f) if f == from => Some((name.clone(), true)),
                Some(f) if to == Some(f) => Some((name.clone(), false)),
                _ => None,
            })
            .collect();
        for (name, moved) in affected {
            if self.state(&name).is_ok_and(|s| s.is_clean()) {
                // Gone already if a concurrent `rm` got there first: nothing else to do.
                let _ = self.remove(&name);
            } else if let Some(file) = self.written.lock().get_mut(&name) {
                // Replaced by the renamed file, whose bytes the image was not made from.
                *file = if moved {
                    to.map(Path::to_path_buf)
                } else {
                    None
                };
            }
        }
        let mut plain = self.plain.lock();
        if let Some(why) = plain.remove(from)
            && let Some(to) = to
        {
            plain.insert(to.to_path_buf(), why);
        }
    }

    /// A directory written in the mount was renamed: images made from files below it, and
    /// files below it that stayed plain, now name paths below `to`.
    pub fn written_dir_moved(&self, from: &Path, to: &Path) {
        let moved = |file: &Path| file.strip_prefix(from).ok().map(|rest| to.join(rest));
        for file in self.written.lock().values_mut() {
            if let Some(now) = file.as_deref().and_then(moved) {
                *file = Some(now);
            }
        }
        let mut plain = self.plain.lock();
        let renamed: Vec<PathBuf> = plain
            .keys()
            .filter(|f| f.starts_with(from))
            .cloned()
            .collect();
        for file in renamed {
            if let (Some(why), Some(now)) = (plain.remove(&file), moved(&file)) {
                plain.insert(now, why);
            }
        }
    }

    /// Records why a file written in the mount with an image's name stays a plain file.
    pub fn note_plain(&self, file: PathBuf, why: String) {
        self.plain.lock().insert(file, why);
    }

    /// Files written in the mount that did not become images, with why.
    pub fn plain_files(&self) -> Vec<(PathBuf, String)> {
        self.plain
            .lock()
            .iter()
            .map(|(f, why)| (f.clone(), why.clone()))
            .collect()
    }

    /// Whether the image served as `file_name` was made from a file written in the mount,
    /// and if so whether it is still clean (the same bytes as that file).
    pub fn written_state(&self, file_name: &OsStr) -> Option<bool> {
        let name = Catalog::name_of(file_name)?;
        if !self.written.lock().contains_key(name) {
            return None;
        }
        self.state(name).ok().map(|s| s.is_clean())
    }

    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        self.entries
            .write()
            .remove(name)
            .ok_or_else(|| CatalogError::UnknownName(name.to_string()))?;
        self.written.lock().remove(name);
        self.notify(name);
        Ok(())
    }

    /// Runs `f` on an image; its changes are served as a new version afterwards.
    pub fn edit<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Image) -> Result<R, ImageError>,
    ) -> Result<R, CatalogError> {
        self.with_fresh(name, |entry| f(&mut entry.image))?
            .map_err(|source| CatalogError::Image {
                name: name.to_string(),
                source,
            })
    }

    /// The design note's `as_filename`: the original while the image is clean, the mount path
    /// otherwise. Refused once the original's data were found unreadable: neither path would
    /// give a reader the data, and the reason is best told here.
    pub fn path(&self, name: &str) -> Result<PathBuf, CatalogError> {
        let written = self.written.lock().get(name).cloned();
        self.with_fresh(name, |entry| {
            let Some(origin) = entry.image.origin() else {
                return Ok(self.mount_path(name));
            };
            if let Some(file) = written {
                // The file it was written as while that still holds its bytes; the served
                // file otherwise (the image's "original" is memory, never a path on disk).
                return Ok(file
                    .filter(|_| entry.image.state().is_clean())
                    .unwrap_or_else(|| self.mount_path(name)));
            }
            if let Some(why) = origin.unreadable() {
                return Err(CatalogError::Image {
                    name: name.to_string(),
                    source: ImageError::DataUnavailable(format!("data cannot be read: {why}")),
                });
            }
            Ok(if entry.image.state().is_clean() {
                origin.path().to_path_buf()
            } else {
                self.mount_path(name)
            })
        })?
    }

    pub fn mount_path(&self, name: &str) -> PathBuf {
        self.mount_dir.join(format!("{name}{SUFFIX}"))
    }

    pub fn state(&self, name: &str) -> Result<DirtyState, CatalogError> {
        self.with_fresh(name, |entry| entry.image.state())
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.read().keys().cloned().collect()
    }

    pub fn list(&self) -> Vec<Summary> {
        self.names()
            .iter()
            .filter_map(|name| self.summary(name).ok())
            .collect()
    }

    pub fn summary(&self, name: &str) -> Result<Summary, CatalogError> {
        self.with_fresh(name, |entry| self.summarize(name, entry))
    }

    fn summarize(&self, name: &str, entry: &Entry) -> Summary {
        let image = &entry.image;
        let state = image.state();
        let header = image.header();
        let format = match image.origin() {
            Some(o) => format!(
                "{} {}{}",
                header.flavor().name(),
                o.file_map.kind_name(),
                if o.file_map.compressed { " gz" } else { "" }
            ),
            None => format!("{} in memory", header.flavor().name()),
        };
        let mut reasons = state.reason_texts();
        let written = self.written.lock().get(name).cloned();
        let mut state_text = state.to_string();
        let mut origin = image.origin().map(|o| o.path().to_path_buf());
        if let Some(file) = &written {
            if state.is_clean() {
                state_text = "written in the mount".to_string();
            }
            reasons.insert(
                0,
                match file {
                    Some(file) => format!(
                        "written in the mount as {}; no original on disk",
                        file.display()
                    ),
                    None => "written in the mount (that file was removed since); no original \
                             on disk"
                        .to_string(),
                },
            );
            origin = None;
        }
        if let Body::Broken(why) = &entry.version.body {
            reasons.push(format!("cannot be served: {why}"));
        }
        Summary {
            name: name.to_string(),
            state: state_text,
            clean: state.is_clean(),
            reasons,
            format,
            shape: image.shape().to_vec(),
            dtype: header
                .datatype()
                .map_or_else(|e| e, |d| d.name().to_string()),
            size: entry.version.size,
            origin,
            served_as: match entry.version.body {
                Body::Original(_) => "passthrough",
                Body::Rendered(_) => "rendered",
                Body::Broken(_) => "unavailable",
            },
            path: match written {
                Some(Some(file)) if state.is_clean() => file,
                _ => self.mount_path(name),
            },
            memory_bytes: image.memory_bytes()
                + entry.held.iter().map(|m| m.charged()).sum::<u64>(),
        }
    }

    /// Runs `f` on an image as it is now (to save it, say), without changing it.
    pub fn with_image<R>(
        &self,
        name: &str,
        f: impl FnOnce(&Image) -> R,
    ) -> Result<R, CatalogError> {
        let entry = self.entry(name)?;
        let entry = entry.lock();
        Ok(f(&entry.image))
    }

    // ---- what the kernel-facing tables ([`crate::vfs`]) ask ----

    /// The file name's image and its current version, brought up to date.
    pub fn current(&self, file_name: &OsStr) -> Option<Arc<Version>> {
        let name = Catalog::name_of(file_name)?;
        let entry = self.entry(name).ok()?;
        let mut entry = entry.lock();
        self.refresh(&mut entry);
        Some(entry.version.clone())
    }

    fn name_of(file_name: &OsStr) -> Option<&str> {
        file_name.to_str()?.strip_suffix(SUFFIX)
    }

    /// A fresh inode number, for a file that is not an image version (one written in the
    /// mount): one counter keeps every inode of the mount distinct.
    pub fn allocate_ino(&self) -> u64 {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    /// The version with inode `ino`, while anything holds it.
    pub fn version(&self, ino: u64) -> Option<Arc<Version>> {
        self.versions.lock().get(&ino).and_then(Weak::upgrade)
    }

    /// Each image's file name with its current version (not refreshed: a listing).
    pub fn current_versions(&self) -> Vec<(String, Arc<Version>)> {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = self
            .entries
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        entries
            .into_iter()
            .map(|(name, entry)| (format!("{name}{SUFFIX}"), entry.lock().version.clone()))
            .collect()
    }

    /// The image whose current version has inode `ino` (a slow scan: for the test-only panic).
    pub fn name_of_version(&self, ino: u64) -> Option<String> {
        self.entries
            .read()
            .iter()
            .find(|(_, entry)| entry.lock().version.ino == ino)
            .map(|(name, _)| name.clone())
    }

    /// How many versions the kernel still holds by inode (for tests and `stats`).
    pub fn kernel_held_versions(&self) -> usize {
        self.stats.kernel_held_versions.load(Ordering::Relaxed) as usize
    }
}

pub fn attr_of(version: &Version) -> Attr {
    Attr {
        ino: version.ino,
        size: version.size,
        mtime: version.mtime,
        is_dir: false,
        writable: false,
    }
}
