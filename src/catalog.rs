//! The catalog: the named images of one mount and the file version each one is served as.
//!
//! This is the filesystem without the kernel: it answers lookups, opens and reads in plain
//! types, and the FUSE adapter only translates. Each change to an image gives it a new version
//! with its own inode, so a reader that opened a version keeps reading it to the end while a
//! later open sees the new one; the kernel is told to forget the old name binding.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use crate::format::gzindex::GzCache;
use crate::format::{self, Flavor};
use crate::image::{DirtyState, FileSource, Image, ImageError};
use crate::progress::{Counting, Progress, Silent};
use crate::render::{Chunk, Rendering};

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
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Stale => libc::ESTALE,
            FsError::Io(_) => libc::EIO,
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

/// A directory listing: file names with their attributes, and the versions they name, kept
/// alive while the listing is paged through so that every inode it hands out can be opened.
pub struct Listing {
    pub files: Vec<(String, Attr)>,
    _versions: Vec<Arc<Version>>,
}

/// A file's attributes, as the kernel needs them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub mtime: SystemTime,
    pub is_dir: bool,
}

/// How an open file is to be served.
#[derive(Debug)]
pub enum Opened {
    /// Hand the kernel this file: reads go to it directly (FUSE passthrough).
    Passthrough { fh: u64, source: Arc<FileSource> },
    /// Reads come to [`Catalog::read`].
    Rendered { fh: u64 },
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
}

struct Entry {
    image: Image,
    version: Arc<Version>,
}

/// The images of one mount.
pub struct Catalog {
    mount_dir: PathBuf,
    entries: RwLock<BTreeMap<String, Arc<Mutex<Entry>>>>,
    versions: Mutex<HashMap<u64, Weak<Version>>>,
    /// The versions the kernel knows by inode, with its lookup count for each. A version stays
    /// openable until the kernel forgets it: a name looked up just before an edit still names
    /// the version it was looked up as, and opening it reads that whole version.
    kernel_refs: Mutex<HashMap<u64, (Arc<Version>, u64)>>,
    handles: RwLock<HashMap<u64, Arc<Version>>>,
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    next_ino: AtomicU64,
    next_fh: AtomicU64,
    invalidate: RwLock<Option<Arc<dyn Invalidate>>>,
    /// Decompressed segments of every compressed original of the mount, under one budget.
    gz_cache: Arc<GzCache>,
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
            kernel_refs: Mutex::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            next_fh: AtomicU64::new(1),
            invalidate: RwLock::new(None),
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
            .filter(|_| state.is_clean() && single_nii);
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
        let stale_original = entry.version.is_passthrough() && !entry.image.state().is_clean();
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
            let entry = Entry { image, version };
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
            self.summarize(name, entry)
        })
    }

    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        self.entries
            .write()
            .remove(name)
            .ok_or_else(|| CatalogError::UnknownName(name.to_string()))?;
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
        self.with_fresh(name, |entry| {
            let Some(origin) = entry.image.origin() else {
                return Ok(self.mount_path(name));
            };
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
        if let Body::Broken(why) = &entry.version.body {
            reasons.push(format!("cannot be served: {why}"));
        }
        Summary {
            name: name.to_string(),
            state: state.to_string(),
            clean: state.is_clean(),
            reasons,
            format,
            shape: image.shape().to_vec(),
            dtype: header
                .datatype()
                .map_or_else(|e| e, |d| d.name().to_string()),
            size: entry.version.size,
            origin: image.origin().map(|o| o.path().to_path_buf()),
            served_as: match entry.version.body {
                Body::Original(_) => "passthrough",
                Body::Rendered(_) => "rendered",
                Body::Broken(_) => "unavailable",
            },
            path: self.mount_path(name),
        }
    }

    /// Writes an image to disk in the format `out`'s name calls for.
    pub fn save(&self, name: &str, out: &Path) -> Result<(), CatalogError> {
        self.save_with_progress(name, out, &Silent)
    }

    /// [`Catalog::save`], telling `progress` how many of the data bytes are written.
    pub fn save_with_progress(
        &self,
        name: &str,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<(), CatalogError> {
        let entry = self.entry(name)?;
        let entry = entry.lock();
        save_image_with_progress(&entry.image, out, progress).map_err(|source| {
            CatalogError::Image {
                name: name.to_string(),
                source,
            }
        })
    }

    // ---- the filesystem side ----

    fn name_of(file_name: &OsStr) -> Option<&str> {
        file_name.to_str()?.strip_suffix(SUFFIX)
    }

    pub fn lookup(&self, file_name: &OsStr) -> Result<Attr, FsError> {
        let name = Catalog::name_of(file_name).ok_or(FsError::NotFound)?;
        let entry = self.entry(name).map_err(|_| FsError::NotFound)?;
        let mut entry = entry.lock();
        self.refresh(&mut entry);
        self.kernel_learned(&entry.version);
        Ok(attr_of(&entry.version))
    }

    fn kernel_learned(&self, version: &Arc<Version>) {
        self.kernel_refs
            .lock()
            .entry(version.ino)
            .or_insert_with(|| (version.clone(), 0))
            .1 += 1;
    }

    /// The kernel was handed a listed file's inode with its attributes (`readdirplus`): it now
    /// holds one more lookup of it.
    pub fn listed(&self, ino: u64) {
        if let Some(version) = self.version(ino) {
            self.kernel_learned(&version);
        }
    }

    /// The kernel dropped `count` lookups of an inode; at none, the version may go.
    pub fn forget(&self, ino: u64, count: u64) {
        let mut refs = self.kernel_refs.lock();
        if let Some((_, held)) = refs.get_mut(&ino) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                refs.remove(&ino);
            }
        }
    }

    /// How many versions the kernel still holds by inode (for tests and `stats`).
    pub fn kernel_held_versions(&self) -> usize {
        self.kernel_refs.lock().len()
    }

    fn version(&self, ino: u64) -> Option<Arc<Version>> {
        self.versions.lock().get(&ino).and_then(Weak::upgrade)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(Attr {
                ino,
                size: 0,
                mtime: SystemTime::now(),
                is_dir: true,
            });
        }
        self.version(ino)
            .map(|v| attr_of(&v))
            .ok_or(FsError::NotFound)
    }

    /// Opens the directory: a snapshot of the listing (`.`, `..`, then each image's file with
    /// its current version's attributes), which the reads of this handle page through.
    pub fn opendir(&self) -> u64 {
        let root = self.getattr(ROOT_INO).expect("the root always exists");
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = self
            .entries
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut files = vec![(".".to_string(), root), ("..".to_string(), root)];
        let mut versions = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            let version = entry.lock().version.clone();
            files.push((format!("{name}{SUFFIX}"), attr_of(&version)));
            versions.push(version);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.listings.lock().insert(
            fh,
            Arc::new(Listing {
                files,
                _versions: versions,
            }),
        );
        fh
    }

    /// The listing of an open directory handle.
    pub fn listing(&self, fh: u64) -> Result<Arc<Listing>, FsError> {
        self.listings.lock().get(&fh).cloned().ok_or(FsError::Stale)
    }

    pub fn releasedir(&self, fh: u64) {
        self.listings.lock().remove(&fh);
    }

    pub fn open(&self, ino: u64) -> Result<Opened, FsError> {
        let version = self.version(ino).ok_or(FsError::Stale)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let opened = match &version.body {
            Body::Original(source) => {
                // The file may have changed since lookup; a passthrough open would serve it.
                if let Err(e) = source.check_unchanged() {
                    log::warn!("refusing a stale passthrough open: {e}");
                    return Err(FsError::Stale);
                }
                self.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                Opened::Passthrough {
                    fh,
                    source: source.clone(),
                }
            }
            _ => {
                self.stats.rendered_opens.fetch_add(1, Ordering::Relaxed);
                Opened::Rendered { fh }
            }
        };
        self.handles.write().insert(fh, version);
        Ok(opened)
    }

    /// Called when passthrough could not be set up: reads of this handle come here instead.
    pub fn passthrough_refused(&self) {
        self.stats.passthrough_opens.fetch_sub(1, Ordering::Relaxed);
        self.stats.rendered_opens.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, fh: u64, offset: u64, size: usize) -> Result<Chunk, FsError> {
        let version = self
            .handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or(FsError::Stale)?;
        let counter = if version.is_passthrough() {
            &self.stats.forwarded_reads
        } else {
            &self.stats.rendered_reads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::fault::panic_if_asked(|| self.name_of_version(version.ino));
        version.read(offset, size)
    }

    /// The image whose current version has inode `ino` (a slow scan: for the test-only panic).
    fn name_of_version(&self, ino: u64) -> Option<String> {
        self.entries
            .read()
            .iter()
            .find(|(_, entry)| entry.lock().version.ino == ino)
            .map(|(name, _)| name.clone())
    }

    pub fn release(&self, fh: u64) {
        self.handles.write().remove(&fh);
    }
}

fn attr_of(version: &Version) -> Attr {
    Attr {
        ino: version.ino,
        size: version.size,
        mtime: version.mtime,
        is_dir: false,
    }
}

/// Writes an image to `out`: NIfTI-2 stays NIfTI-2, Analyze stays Analyze in a pair, the rest
/// is NIfTI-1.
pub fn save_image(image: &Image, out: &Path) -> Result<(), ImageError> {
    save_image_with_progress(image, out, &Silent)
}

/// [`save_image`], telling `progress` how many of the data bytes are written.
pub fn save_image_with_progress(
    image: &Image,
    out: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let map = format::FileMap::from_path(out)?;
    let source_flavor = image.header().flavor();
    let flavor = match (map.is_single(), source_flavor) {
        (_, Flavor::Nifti2) => Flavor::Nifti2,
        (false, Flavor::Analyze) => Flavor::Analyze,
        _ => Flavor::Nifti1,
    };
    let rendering = Rendering::of(image).map_err(ImageError::DataUnavailable)?;
    let header = image.header_as(flavor);
    let data_len = rendering.size() - rendering.prefix().len() as u64;
    let mut write = |w: &mut dyn std::io::Write| {
        let mut counting = Counting::new(w, data_len, progress);
        rendering.write_data_to(&mut counting)?;
        counting.finish();
        Ok(())
    };
    format::io::save(
        out,
        format::io::ImageToSave {
            header: &header,
            extensions: image.extensions(),
            affine: Some(image.affine()),
            write_data: &mut write,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ByteOrder, Header, affine};
    use crate::image::VoxelBuffer;

    fn catalog_with(name: &str) -> Catalog {
        let data = VoxelBuffer::from_vec(&[2, 2, 2], &[1.0f32; 8]);
        let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
        let image = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
        let catalog = Catalog::new(PathBuf::from("/nowhere"));
        catalog.insert(name, image).unwrap();
        catalog
    }

    fn descrip_of(catalog: &Catalog, fh: u64) -> String {
        let bytes = catalog.read(fh, 0, 348).unwrap();
        Header::parse(&bytes).unwrap().descrip()
    }

    #[test]
    fn a_looked_up_version_stays_openable_after_an_edit_until_the_kernel_forgets_it() {
        let catalog = catalog_with("a");
        let old = catalog.lookup(OsStr::new("a.nii")).unwrap();
        catalog
            .edit("a", |img| img.set_field("descrip", "new"))
            .unwrap();
        let new = catalog.lookup(OsStr::new("a.nii")).unwrap();
        assert_ne!(old.ino, new.ino);
        assert_eq!(catalog.kernel_held_versions(), 2);

        let Opened::Rendered { fh } = catalog.open(old.ino).unwrap() else {
            panic!("an in-memory image is rendered");
        };
        assert_eq!(descrip_of(&catalog, fh), "");
        catalog.release(fh);

        catalog.forget(old.ino, 1);
        assert_eq!(catalog.open(old.ino).unwrap_err(), FsError::Stale);
        assert_eq!(catalog.kernel_held_versions(), 1);
        let Opened::Rendered { fh } = catalog.open(new.ino).unwrap() else {
            panic!("an in-memory image is rendered");
        };
        assert_eq!(descrip_of(&catalog, fh), "new");
    }

    #[test]
    fn lookups_are_counted_and_forgotten_together() {
        let catalog = catalog_with("a");
        let fh = catalog.opendir();
        let ino = catalog.listing(fh).unwrap().files[2].1.ino;
        catalog.listed(ino);
        catalog.releasedir(fh);
        catalog.lookup(OsStr::new("a.nii")).unwrap();
        catalog
            .edit("a", |img| img.set_field("descrip", "x"))
            .unwrap();
        catalog.forget(ino, 1);
        let opened = catalog.open(ino).expect("one lookup is still held");
        let Opened::Rendered { fh } = opened else {
            panic!("an in-memory image is rendered");
        };
        catalog.release(fh);
        catalog.forget(ino, 1);
        assert_eq!(catalog.open(ino).unwrap_err(), FsError::Stale);
        catalog.forget(ino, 5);
        assert_eq!(catalog.kernel_held_versions(), 0);
    }
}
