//! Mounting: the Rust API (a mount owned by the calling program, unmounted on drop) and the
//! daemon that `imgfs mount` runs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Catalog, CatalogError, Summary};
use crate::control::{self, server};
use crate::fuse::{self, MountSettings};
use crate::fusermount::Watcher;
use crate::image::{DirtyState, Image, ImageError};
use crate::vfs::Vfs;
use crate::written::Budget;

/// Options for a mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let other users read the mount.
    pub allow_other: bool,
    /// Serve the control socket, so the CLI and other processes can drive this mount.
    pub control: bool,
    /// Serve clean files by forwarding reads instead of kernel passthrough.
    pub no_passthrough: bool,
    /// The budget of decompressed gzip segments kept for all the mount's compressed originals
    /// (default [`crate::catalog::DEFAULT_GZIP_CACHE`]).
    pub gzip_cache_bytes: Option<u64>,
    /// Refuse writes: no file can be created in the mount.
    pub read_only: bool,
    /// Bytes that files written in the mount may hold together; 0 means half the RAM.
    pub max_memory: u64,
}

/// A mount owned by this program: images inserted here appear as files in `dir` until the
/// mount is dropped.
pub struct Mount {
    catalog: Arc<Catalog>,
    session: Option<fuser::BackgroundSession>,
    watcher: Option<Watcher>,
    _socket: Option<server::SocketGuard>,
}

impl Mount {
    /// Mounts `dir` (created if missing) with default options.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Mount> {
        Mount::with_options(dir, &MountOptions::default())
    }

    pub fn with_options(dir: impl AsRef<Path>, options: &MountOptions) -> io::Result<Mount> {
        let dir = prepare_dir(dir.as_ref())?;
        let catalog = Arc::new(Catalog::with_gzip_cache(
            dir.clone(),
            options.gzip_cache_bytes,
        ));
        let (session, watcher) = fuse::mount(vfs(&catalog, options), &dir, &settings(options))?;
        let socket = if options.control {
            let path = control::socket_path(&dir)?;
            let listener = server::bind(&path)?;
            server::spawn(listener, catalog.clone(), None)?;
            Some(server::SocketGuard(path))
        } else {
            None
        };
        Ok(Mount {
            catalog,
            session: Some(session.spawn()?),
            watcher: Some(watcher),
            _socket: socket,
        })
    }

    pub fn dir(&self) -> &Path {
        self.catalog.mount_dir()
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Loads an image's header from `path` and serves it as `name`.
    pub fn add(&self, name: &str, path: impl AsRef<Path>) -> Result<Summary, CatalogError> {
        self.catalog.add(name, path.as_ref())
    }

    /// Serves an image held in memory.
    pub fn insert(&self, name: &str, image: Image) -> Result<Summary, CatalogError> {
        self.catalog.insert(name, image)
    }

    /// Edits an image; the mount serves the result as a new version.
    pub fn edit<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Image) -> Result<R, ImageError>,
    ) -> Result<R, CatalogError> {
        self.catalog.edit(name, f)
    }

    /// The original file while the image is clean, its file in the mount otherwise.
    pub fn path(&self, name: &str) -> Result<PathBuf, CatalogError> {
        self.catalog.path(name)
    }

    pub fn state(&self, name: &str) -> Result<DirtyState, CatalogError> {
        self.catalog.state(name)
    }

    /// Unmounts now, reporting any error (dropping does the same, silently).
    pub fn unmount(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // fusermount3's auto-unmount only acts on a dead connection, so a live mount is
        // detached here; the session then ends and its thread can be joined.
        let detached = detach(self.catalog.mount_dir());
        session.umount_and_join()?;
        drop(self.watcher.take());
        detached
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!("unmounting {}: {e}", self.catalog.mount_dir().display());
        }
    }
}

fn settings(options: &MountOptions) -> MountSettings {
    MountSettings {
        allow_other: options.allow_other,
        no_passthrough: options.no_passthrough,
        read_only: options.read_only,
    }
}

/// The kernel's view of the catalog: read-only, or writable within the memory limit.
fn vfs(catalog: &Arc<Catalog>, options: &MountOptions) -> Vfs {
    if options.read_only {
        return Vfs::new(catalog.clone());
    }
    let limit = match options.max_memory {
        0 => half_of_ram(),
        n => n,
    };
    Vfs::with_writing(catalog.clone(), Some(Budget::new(limit)))
}

/// The default limit on written files: half the machine's RAM, as tmpfs takes by default.
fn half_of_ram() -> u64 {
    // SAFETY: sysinfo fills the struct it is given and touches no other memory.
    let info = unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut info) != 0 {
            return 1 << 30;
        }
        info
    };
    (info.totalram as u64).saturating_mul(info.mem_unit as u64) / 2
}

/// Creates the mount point, and clears a dead mount left there by a daemon that died.
///
/// Mount points often live in /tmp, where anyone may have planted a name first: a symlink
/// would move the mount (or, for root, a directory created on the way) somewhere the user
/// never meant, so the mount point itself must be a real directory owned by this user, and a
/// symlink on the way there must be this user's or root's (the kernel's `protected_symlinks`
/// rule). The default mount point is kept private (0700).
pub(crate) fn prepare_dir(dir: &Path) -> io::Result<PathBuf> {
    let dir = control::normalize(dir)?;
    control::refuse_foreign_symlinks(&dir)?;
    if let Err(e) = std::fs::symlink_metadata(&dir)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        log::warn!("{} is a dead mount; detaching it", dir.display());
        detach(&dir)?;
    }
    let private = dir == control::normalize(&control::default_mount_dir())?;
    control::own_dir(&dir, private, "mount on")?;
    if is_mount_point(&dir) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is already a mount point", dir.display()),
        ));
    }
    Ok(dir)
}

pub use crate::mountinfo::is_mount_point;

/// Lazily unmounts `dir`: directly as root, else through `fusermount3 -u -z`.
pub fn detach(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "could not unmount {}",
            dir.display()
        )))
    }
}

/// Makes freed buffers of 256 KiB and more go back to the system at once. Reads and
/// conversions on several threads allocate a reply buffer of up to 1 MiB each; glibc's
/// default raises its mmap threshold after such frees, and each thread's heap then keeps tens
/// of MiB: measured here, the daemon grew by 200 MiB after two 256 MiB datatype changes of
/// `.nii.gz` images, which is memory the gzip index exists to save. Only the daemon does this:
/// a program using the Rust API keeps its own allocator settings.
fn return_large_buffers_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before the daemon's
    // threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Runs a mount daemon in this process until it is told to stop or unmounted.
/// `on_ready` is called once the mount and its control socket are live.
pub fn run_daemon(
    dir: &Path,
    options: &MountOptions,
    on_ready: impl FnOnce(&Path),
) -> io::Result<()> {
    // A reader of the daemon's stderr or a client that went away must never end the mount.
    // SAFETY: setting a signal's disposition touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let dir = prepare_dir(dir)?;
    return_large_buffers_at_once();
    let catalog = Arc::new(Catalog::with_gzip_cache(
        dir.clone(),
        options.gzip_cache_bytes,
    ));
    // The watcher lives until this returns: dropped, it lets fusermount3 go.
    let (session, _watcher) = fuse::mount(vfs(&catalog, options), &dir, &settings(options))?;
    let socket = control::socket_path(&dir)?;
    let listener = server::bind(&socket)?;
    let _guard = server::SocketGuard(socket);
    // fusermount3's auto-unmount only acts once the connection is dead, so a requested stop
    // detaches the mount itself; the session loop then sees the connection end.
    let mount_dir = dir.clone();
    let stop: server::Shutdown = Arc::new(move || {
        if let Err(e) = detach(&mount_dir) {
            log::error!("unmounting {}: {e}", mount_dir.display());
        }
    });
    stop_on_signals(stop.clone())?;
    server::spawn(listener, catalog, Some(stop))?;
    on_ready(&dir);
    session.run()
}

/// SIGINT, SIGTERM or SIGHUP stop the daemon as `imgfs unmount` does: the mount is detached,
/// the session loop ends and the control socket is removed on the way out, instead of the
/// process dying with the socket left behind.
fn stop_on_signals(stop: server::Shutdown) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("imgfs-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                log::info!("signal {signal}: unmounting");
                stop();
            }
        })?;
    Ok(())
}
