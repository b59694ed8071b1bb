//! The `imgfs` command.

fn main() -> std::process::ExitCode {
    // A command whose output is cut short (`imgfs ls | head -1`) ends quietly, as shell tools
    // do, instead of panicking on the broken pipe; the daemon ignores SIGPIPE again (see
    // `mount::run_daemon`), since nothing it writes may end it.
    // SAFETY: setting a signal's disposition to its default touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    imgfs::cli::main()
}
