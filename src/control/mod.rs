//! The control protocol: how other processes (the CLI, the Python client, anything that can
//! open a Unix socket) drive a mount.
//!
//! One request per line, one JSON object; one response line each. File descriptors (a memfd
//! holding voxel data) travel beside the bytes as SCM_RIGHTS ancillary data. The socket sits in
//! a directory only the user can enter (mode 0700) and is itself mode 0600. See
//! `docs/PROTOCOL.md` for the request and response fields.

pub mod client;
pub mod fdpass;
pub mod protocol;
pub mod server;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The mount directory used when none is given: `$XDG_RUNTIME_DIR/imgfs`, else
/// `/tmp/imgfs-$UID`.
pub fn default_mount_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("imgfs"),
        _ => PathBuf::from(format!("/tmp/imgfs-{}", uid())),
    }
}

/// The mount directory a command means: the one given, else `$IMGFS_MOUNT`, else the default.
pub fn resolve_mount_dir(given: Option<&Path>) -> io::Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("IMGFS_MOUNT") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => default_mount_dir(),
        },
    };
    normalize(&dir)
}

/// An absolute path with `.` and `..` resolved lexically: a dead mount cannot be stat'ed, and
/// the socket must still be found from it.
pub fn normalize(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let mut out = PathBuf::new();
    for part in abs.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The private directory holding the control sockets and daemon logs of this user.
pub fn control_dir() -> io::Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("imgfs-control"),
        _ => PathBuf::from(format!("/tmp/imgfs-control-{}", uid())),
    };
    own_dir(&dir, true, "use")?;
    Ok(dir)
}

/// Creates `dir` if missing, then makes sure it is a real directory (not a symlink) owned by
/// this user: in /tmp another user may have made the name first. A `private` directory is
/// also made (or kept) mode 0700. `purpose` completes "refusing to ..." in the error.
pub fn own_dir(dir: &Path, private: bool, purpose: &str) -> io::Result<()> {
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing to {purpose} {}: {why}", dir.display()),
        )
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", parent.display())))?;
    }
    // mkdir never follows a symlink in its last component and fails if the name exists, so
    // a directory made here is ours; an existing name is checked below.
    match std::fs::DirBuilder::new()
        .mode(if private { 0o700 } else { 0o777 })
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if meta.uid() != uid() {
        return Err(refuse(format!(
            "it is owned by uid {}, not by this user (uid {})",
            meta.uid(),
            uid()
        )));
    }
    // Our own directory in a sticky /tmp cannot be swapped by anyone else, so setting the
    // mode by name after the check is safe.
    if private && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Refuses a path that passes through a symlink owned by someone other than this user or
/// root: in a shared directory such as /tmp, that symlink could point anywhere. (The path
/// itself is checked by [`own_dir`].)
pub fn refuse_foreign_symlinks(path: &Path) -> io::Result<()> {
    let me = uid();
    for ancestor in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::symlink_metadata(ancestor) else {
            continue;
        };
        if meta.file_type().is_symlink() && meta.uid() != me && meta.uid() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing {}: {} is a symbolic link owned by uid {}",
                    path.display(),
                    ancestor.display(),
                    meta.uid()
                ),
            ));
        }
    }
    Ok(())
}

/// A stable short key for a mount directory (FNV-1a of its normalized path).
fn key(mount_dir: &Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in mount_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The control socket of the mount at `mount_dir` (normalized).
pub fn socket_path(mount_dir: &Path) -> io::Result<PathBuf> {
    Ok(control_dir()?.join(format!("{}.sock", key(mount_dir))))
}

/// Where a background daemon for `mount_dir` writes its log.
pub fn log_path(mount_dir: &Path) -> io::Result<PathBuf> {
    Ok(control_dir()?.join(format!("{}.log", key(mount_dir))))
}

/// Opens (truncating) the log at `path` for a new daemon. The control directory is private,
/// but a name in it may still have been planted (by an earlier, looser version, or a
/// directory made by someone else before it was checked): a symlink is not followed, and a
/// file not owned by this user is refused.
pub fn create_log(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    // O_NONBLOCK: a planted FIFO must not hang the open.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("refusing the log {}: it is a symbolic link", path.display()),
                )
            } else {
                named(e)
            }
        })?;
    let meta = file.metadata().map_err(named)?;
    if !meta.is_file() || meta.uid() != uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing the log {}: not a regular file owned by this user",
                path.display()
            ),
        ));
    }
    // Truncated only once known to be ours; blocking mode back for the daemon's writes.
    file.set_len(0).map_err(named)?;
    // SAFETY: fcntl on a descriptor this function owns; it only changes its status flags.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } == -1 {
        return Err(named(io::Error::last_os_error()));
    }
    Ok(file)
}
