//! What the kernel's mount table (`/proc/self/mountinfo`) says about a directory: whether
//! something is mounted there, and which device it is. Read rather than stat'ed, because a
//! stat of a FUSE mount point is a request to its daemon, which may be dead or not yet serving.

use std::path::Path;

/// The device (`major:minor`) of the mount at `dir`, the most recent if several are stacked.
pub fn device_of(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // mountinfo escapes spaces in paths as \040.
    let wanted = dir.to_string_lossy().replace(' ', "\\040");
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&wanted.as_str())).then(|| fields[2].to_string())
    })
}

/// Whether something is mounted at `dir`.
pub fn is_mount_point(dir: &Path) -> bool {
    device_of(dir).is_some()
}
