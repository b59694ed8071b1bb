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

/// A directory listing: file names with their attributes, and the versions they name, kept
/// alive while the listing is paged through so that every inode it hands out can be opened.
pub struct Listing {
    pub files: Vec<(String, Attr)>,
    _versions: Vec<Arc<Version>>,
}

/// How an open file is to be served.
#[derive(Debug)]
pub enum Opened {
    /// Hand the kernel this file: reads go to it directly (FUSE passthrough).
    Passthrough { fh: u64, source: Arc<FileSource> },
    /// Reads come to [`Vfs::read`].
    Rendered { fh: u64 },
}

/// The kernel's view of one mount.
pub struct Vfs {
    catalog: Arc<Catalog>,
    /// The versions the kernel knows by inode, with its lookup count for each. A version stays
    /// openable until the kernel forgets it: a name looked up just before an edit still names
    /// the version it was looked up as, and opening it reads that whole version.
    kernel_refs: Mutex<HashMap<u64, (Arc<Version>, u64)>>,
    handles: RwLock<HashMap<u64, Arc<Version>>>,
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

impl Vfs {
    pub fn new(catalog: Arc<Catalog>) -> Vfs {
        Vfs {
            catalog,
            kernel_refs: Mutex::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn lookup(&self, file_name: &OsStr) -> Result<Attr, FsError> {
        let version = self.catalog.current(file_name).ok_or(FsError::NotFound)?;
        self.kernel_learned(&version);
        Ok(attr_of(&version))
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
        self.publish_held(refs.len());
    }

    /// How many versions the kernel still holds by inode (for tests and `stats`).
    pub fn kernel_held_versions(&self) -> usize {
        self.kernel_refs.lock().len()
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
        self.catalog
            .version(ino)
            .map(|v| attr_of(&v))
            .ok_or(FsError::NotFound)
    }

    /// Opens the directory: a snapshot of the listing (`.`, `..`, then each image's file with
    /// its current version's attributes), which the reads of this handle page through.
    pub fn opendir(&self) -> u64 {
        let root = self.getattr(ROOT_INO).expect("the root always exists");
        let current = self.catalog.current_versions();
        let mut files = vec![(".".to_string(), root), ("..".to_string(), root)];
        let mut versions = Vec::with_capacity(current.len());
        for (file_name, version) in current {
            files.push((file_name, attr_of(&version)));
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
        let version = self.catalog.version(ino).ok_or(FsError::Stale)?;
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
        self.handles.write().insert(fh, version);
        Ok(opened)
    }

    /// Called when passthrough could not be set up: reads of this handle come here instead.
    pub fn passthrough_refused(&self) {
        let stats = &self.catalog.stats;
        stats.passthrough_opens.fetch_sub(1, Ordering::Relaxed);
        stats.rendered_opens.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, fh: u64, offset: u64, size: usize) -> Result<Chunk, FsError> {
        let version = self
            .handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or(FsError::Stale)?;
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

    pub fn release(&self, fh: u64) {
        self.handles.write().remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ByteOrder, Flavor, Header, affine};
    use crate::image::{Image, VoxelBuffer};
    use std::path::PathBuf;

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
        let old = catalog.lookup(OsStr::new("a.nii")).unwrap();
        catalog
            .catalog()
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
            .catalog()
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
