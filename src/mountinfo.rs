//! What the kernel's mount table (`/proc/self/mountinfo`) says about a directory: whether
//! something is mounted there, and which device it is. Read rather than stat'ed, because a
//! stat of a FUSE mount point is a request to its daemon, which may be dead or not yet serving.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The device (`major:minor`) of the mount at `dir`, the most recent if several are stacked.
pub fn device_of(dir: &Path) -> Option<String> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    device_in(&info, dir)
}

/// [`device_of`] over the given table text.
fn device_in(info: &[u8], dir: &Path) -> Option<String> {
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let point = fields.get(4)?;
        (unescape(point) == dir).then(|| String::from_utf8_lossy(fields[2]).into_owned())
    })
}

/// A path as the kernel writes it in the table: space, tab, newline and backslash are written
/// as `\` and three octal digits (`\040`, `\011`, `\012`, `\134`); every such escape is
/// decoded, so a name holding any of them is still recognised as mounted.
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Whether something is mounted at `dir`.
pub fn is_mount_point(dir: &Path) -> bool {
    device_of(dir).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "22 1 0:21 / / rw - ext4 /dev/root rw\n\
        40 22 0:45 / /tmp/a\\040b\\011c\\012d\\134e rw - fuse imgfs rw\n\
        41 22 0:46 / /tmp/a rw - fuse imgfs rw\n";

    #[test]
    fn every_octal_escape_is_decoded() {
        let odd = Path::new("/tmp/a b\tc\nd\\e");
        assert_eq!(device_in(TABLE.as_bytes(), odd).as_deref(), Some("0:45"));
    }

    #[test]
    fn an_escaped_name_does_not_match_its_escape_text_or_a_prefix() {
        let literal = Path::new("/tmp/a\\040b\\011c\\012d\\134e");
        assert_eq!(device_in(TABLE.as_bytes(), literal), None);
        assert_eq!(
            device_in(TABLE.as_bytes(), Path::new("/tmp/a")).as_deref(),
            Some("0:46")
        );
        assert_eq!(device_in(TABLE.as_bytes(), Path::new("/tmp/b")), None);
    }

    #[test]
    fn a_backslash_not_followed_by_three_octal_digits_stays() {
        assert_eq!(unescape(b"/x\\9y\\"), PathBuf::from("/x\\9y\\"));
    }
}
