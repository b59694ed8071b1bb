//! Test-only faults. A test proves that a panicking request fails alone (the daemon and every
//! other image live on) by naming an image in `IMGFS_TEST_PANIC`: FUSE reads of that image's
//! file and `show` requests for it then panic. Only debug builds have this: in a release build
//! the check is an empty function, so no user of a release build can reach it.

/// Panics if `IMGFS_TEST_PANIC` names the image `name` gives; `name` runs only when the
/// variable is set.
#[cfg(debug_assertions)]
pub fn panic_if_asked(name: impl FnOnce() -> Option<String>) {
    static TARGET: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var_os("IMGFS_TEST_PANIC"));
    if let Some(target) = target
        && let Some(name) = name()
        && *target == *name
    {
        panic!("IMGFS_TEST_PANIC: a panic asked for by a test, on image {name}");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn panic_if_asked(_name: impl FnOnce() -> Option<String>) {}

/// Never returns if `IMGFS_TEST_HANG_BEFORE_READY` is set: a test's stand-in for a daemon that
/// never becomes ready (its mount directory hangs), for the start-up timeout.
#[cfg(debug_assertions)]
pub fn hang_if_asked() {
    if std::env::var_os("IMGFS_TEST_HANG_BEFORE_READY").is_some() {
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hang_if_asked() {}
