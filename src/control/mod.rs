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
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by this user; refusing to use it",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
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
