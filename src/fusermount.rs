//! Mounting through `fusermount3`, libfuse's setuid helper, and unmounting when the daemon
//! dies: the one way imgfs mounts, for root and ordinary users alike.
//!
//! Why the helper and not fuser's own mount call: an ordinary user cannot call mount(2).
//! `fusermount3` mounts with its setuid rights and hands the `/dev/fuse` descriptor back over a
//! socket (the `_FUSE_COMMFD` protocol, SCM_RIGHTS); the descriptor then goes to
//! `fuser::Session::from_fd`. fuser 0.18 drives the same helper itself, but only with
//! `allow_other` when asked to auto-unmount, which Debian's stock `/etc/fuse.conf` refuses to
//! ordinary users. Without `allow_other` the kernel itself keeps every other user out of the
//! mount, root included: a check no daemon bug can undo, so that is the default.
//!
//! Why a watchdog of our own and not the helper's `auto_unmount`: measured with fusermount3
//! 3.14 (Debian 12), its watcher checks that the mount is dead by opening the mount point with
//! its root rights, which the kernel refuses on a mount without `allow_other` (EACCES, not the
//! ENOTCONN it looks for), so it leaves the dead mount in place. The watchdog here is a process
//! forked from the daemon with the user's own credentials: it waits for a pipe from the daemon
//! to close (the kernel closes it when the daemon dies, even by SIGKILL), then, if the mount
//! point answers ENOTCONN (its daemon is gone), runs `fusermount3 -u -z` on it.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HELPER: &str = "fusermount3";

/// The watchdog of a mount. Dropping this closes the pipe: the watchdog then unmounts only a
/// mount whose daemon is gone, and exits; it is reaped on a thread.
pub struct Watcher {
    pipe: Option<OwnedFd>,
    pid: libc::pid_t,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.pipe.take());
        let pid = self.pid;
        let _ = std::thread::Builder::new()
            .name("imgfs-watchdog-reaper".into())
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waits for our own child; status is a live local.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            });
    }
}

/// Mounts `dir` with the comma-free mount `options` and returns the FUSE device descriptor to
/// serve, and the watchdog to keep while serving.
pub fn mount(dir: &Path, options: &[&str]) -> io::Result<(OwnedFd, Watcher)> {
    let helper = find_helper().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "mounting {} needs {HELPER} (package fuse3), not found in PATH",
                dir.display()
            ),
        )
    })?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(&helper);
    cmd.arg("-o")
        .arg(options.join(","))
        .arg("--")
        .arg(dir)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let fd = theirs.as_raw_fd();
    // SAFETY: only fcntl, which is async-signal-safe, runs between fork and exec. The socket
    // is created close-on-exec so that no other child started meanwhile inherits it; only
    // the helper gets it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mounting {}: {HELPER}: {e}", dir.display()),
        )
    })?;
    drop(theirs);
    let mut byte = [0u8; 1];
    let received = crate::control::fdpass::recv_with_fds(&ours, &mut byte);
    drop(ours);
    // Without auto_unmount the helper exits once it has sent the descriptor (or failed).
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    let _ = child.wait();
    let said = said.trim();
    match received {
        Ok((_, mut fds)) if fds.len() == 1 => {
            if !said.is_empty() {
                log::warn!("{HELPER}: {said}");
            }
            let device = fds.remove(0);
            let watcher = spawn_watchdog(&helper, dir)?;
            Ok((device, watcher))
        }
        other => {
            let mut message = if said.is_empty() {
                match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "no FUSE device received".into(),
                }
            } else {
                said.to_string()
            };
            if message.contains("user_allow_other") {
                message.push_str(" (--allow-other needs user_allow_other in /etc/fuse.conf)");
            }
            Err(io::Error::other(format!(
                "mounting {}: {HELPER}: {message}",
                dir.display()
            )))
        }
    }
}

fn find_helper() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&paths)
        .map(|p| p.join(HELPER))
        .find(|p| p.is_file())
}

/// Forks the watchdog described in the module comment.
fn spawn_watchdog(helper: &Path, dir: &Path) -> io::Result<Watcher> {
    // Everything the child needs is built before the fork: after it, in a copy of a
    // multithreaded process, only async-signal-safe calls are allowed (no allocation).
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let helper = cstr(helper)?;
    let dir_c = cstr(dir)?;
    let args = [c"-u", c"-z", c"--"];
    let argv = [
        helper.as_ptr(),
        args[0].as_ptr(),
        args[1].as_ptr(),
        args[2].as_ptr(),
        dir_c.as_ptr(),
        std::ptr::null(),
    ];
    let envp = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: fds is a live array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child runs only async-signal-safe system calls on memory prepared above
    // (setsid, prctl, sigprocmask, close, dup2, close_range, read, lstat, nanosleep, execve, _exit) and never
    // returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see the fork above.
        unsafe { watchdog(fds, &dir_c, &argv, &envp) }
    }
    drop(read_end);
    Ok(Watcher {
        pipe: Some(write_end),
        pid,
    })
}

/// The watchdog's whole life, in the forked child.
///
/// # Safety
/// Only in a child just forked by [`spawn_watchdog`], with its prepared arguments.
unsafe fn watchdog(
    fds: [RawFd; 2],
    dir: &CString,
    argv: &[*const libc::c_char; 6],
    envp: &[*const libc::c_char; 2],
) -> ! {
    // SAFETY: async-signal-safe system calls only, on memory prepared before the fork.
    unsafe {
        // Its own session, deaf to signals: a SIGINT or SIGHUP sent to the daemon's group must
        // not take the watchdog with it.
        libc::setsid();
        // Told apart from the daemon in `ps` (the command line is the daemon's).
        libc::prctl(libc::PR_SET_NAME, c"imgfs-watchdog".as_ptr());
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        libc::close(fds[1]);
        if fds[0] != 0 {
            libc::dup2(fds[0], 0);
        }
        // Every other descriptor goes, the FUSE device above all: a copy held here would keep
        // the dead daemon's connection alive.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..65536 {
                libc::close(fd);
            }
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(0, (&mut byte as *mut u8).cast(), 1);
            if n == -1 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n != 1 {
                break;
            }
        }
        // The dying daemon's descriptors close one by one: the pipe may go before the FUSE
        // device does, and a stat made in that instant is aborted with the connection
        // (ECONNABORTED) rather than refused as dead (ENOTCONN). Ask again until the answer
        // is final: ENOTCONN (dead: unmount), success or any other error (alive, or no longer
        // a mount: leave it).
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        for _ in 0..250 {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(dir.as_ptr(), &mut st) == 0 {
                break;
            }
            match *libc::__errno_location() {
                libc::ENOTCONN => {
                    libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                    break;
                }
                libc::ECONNABORTED | libc::EINTR => {
                    libc::nanosleep(&pause, std::ptr::null_mut());
                }
                _ => break,
            }
        }
        libc::_exit(0)
    }
}
