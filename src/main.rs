//! The `imgfs` command.

fn main() -> std::process::ExitCode {
    imgfs::cli::main()
}
