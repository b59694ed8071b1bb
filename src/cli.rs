//! The command line: parses arguments, calls the library or the control socket, prints.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::catalog::name_from_path;
use crate::control::client::Client;
use crate::control::protocol::Request;
use crate::control::{self, resolve_mount_dir};
use crate::format::{self, LoadedFile};
use crate::image::Image;
use crate::mount::{self, Mount, MountOptions};
use crate::render::{save_image, save_image_with_progress};

const RECIPE: &str = "\
Recipe:
  imgfs mount                          # a mount at the default directory, in the background
  imgfs add t1=/data/sub-01_T1w.nii.gz # serve an image (headers only are read)
  imgfs set t1 descrip=skullstripped   # edit its header by nibabel's field names
  mrinfo \"$(imgfs path t1)\"            # hand any tool the file
  imgfs save t1 /tmp/t1_edited.nii.gz  # write it to disk
  imgfs unmount

Every verb that talks to a mount takes --mount DIR (or $IMGFS_MOUNT). Logging: RUST_LOG
(error, warn, info, debug, trace; default warn) filters what is logged, e.g. RUST_LOG=debug.";

#[derive(Parser)]
#[command(
    name = "imgfs",
    version,
    about = "Serve in-memory NIfTI and Analyze images as files, without temporary copies",
    after_help = RECIPE
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

/// The mount a verb talks to.
#[derive(Args)]
struct MountArg {
    /// The mount directory [default: $XDG_RUNTIME_DIR/imgfs, else /tmp/imgfs-$UID].
    #[arg(long, value_name = "DIR", env = "IMGFS_MOUNT")]
    mount: Option<PathBuf>,
}

/// `--json`: print the answer as JSON instead of text.
#[derive(Args)]
struct JsonArg {
    /// Print the result as JSON (and no progress).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Verb {
    /// Print an image file's header: format, byte order, dims, dtype, affine, scaling, extensions.
    #[command(after_help = "Example:\n  imgfs info /data/t1.nii.gz --json")]
    Info {
        /// The image file (.nii, .hdr/.img, Analyze, optionally .gz).
        file: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Write an image in the format OUT's extension calls for, with header edits.
    #[command(after_help = "Example:\n  imgfs convert in.hdr out.nii.gz --set descrip=converted")]
    Convert {
        /// The image to read.
        input: PathBuf,
        /// The file to write; its extension picks the format (.nii, .nii.gz, .hdr, .img, ...).
        output: PathBuf,
        /// A header edit FIELD=VALUE, with nibabel's field names (repeatable).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Mount DIR and serve it from a daemon; returns once the mount is live.
    #[command(
        after_help = "Examples:\n  imgfs mount                      # the default directory, \
        in the background\n  imgfs mount -f -o allow_other /mnt/imgfs   # in the foreground; \
        Ctrl-C unmounts"
    )]
    Mount {
        /// The directory to mount on, created if missing [default: $XDG_RUNTIME_DIR/imgfs,
        /// else /tmp/imgfs-$UID].
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stay in the foreground, logging to stderr; SIGINT or SIGTERM unmounts.
        #[arg(short = 'f', long)]
        foreground: bool,
        /// Mount options, comma-separated: allow_other, ro (as --read-only), rw (the
        /// default), debug (as -d), no_passthrough.
        #[arg(short = 'o', value_name = "OPT[,OPT...]", value_delimiter = ',')]
        options: Vec<String>,
        /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf unless
        /// root).
        #[arg(long)]
        allow_other: bool,
        /// Serve clean files by forwarding reads instead of kernel passthrough.
        #[arg(long)]
        no_passthrough: bool,
        /// MiB of decompressed gzip data kept for all compressed originals (default 32).
        #[arg(long, value_name = "MIB")]
        gzip_cache_mib: Option<u64>,
        #[command(flatten)]
        writing: Writing,
        /// Log at debug level and stay in the foreground (as -f), like other FUSE
        /// filesystems' -d.
        #[arg(short = 'd', long)]
        debug: bool,
        /// Where the daemon logs [default: stderr in the foreground; in the background
        /// <control dir>/<key>.log, removed when the mount stops cleanly].
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// How long to wait for a background daemon to become ready.
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
        timeout: f64,
        /// Internal: report readiness on stdout, then detach from it.
        #[arg(long, hide = true)]
        daemon_ready: bool,
    },
    /// Unmount a mount and stop its daemon.
    #[command(after_help = "Example:\n  imgfs unmount --mount /mnt/imgfs")]
    Unmount {
        /// The mount directory (the same as --mount; given, it wins over --mount and
        /// $IMGFS_MOUNT).
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        mount: MountArg,
    },
    /// Load images: NAME=PATH, or PATH (named after the file stem). The data stay lazy.
    #[command(after_help = "Example:\n  imgfs add t1=/data/sub-01_T1w.nii.gz /data/bold.nii")]
    Add {
        /// NAME=PATH, or PATH alone (the name is the file name without its image suffixes).
        #[arg(required = true, value_name = "NAME=PATH")]
        images: Vec<String>,
        #[command(flatten)]
        mount: MountArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List the images: name, state with its reasons, format, dims, dtype, size, origin.
    #[command(after_help = "Example:\n  imgfs ls --json")]
    Ls {
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        mount: MountArg,
    },
    /// Show one image's summary, header fields, affine and extensions as JSON.
    #[command(after_help = "Example:\n  imgfs show t1")]
    Show {
        /// The image's name.
        name: String,
        #[command(flatten)]
        mount: MountArg,
    },
    /// Edit header fields by nibabel's names: descrip=..., datatype=int16, sform_code=2, ...
    #[command(
        after_help = "Example:\n  imgfs set t1 descrip=skullstripped srow_x=-1,0,0,90 \
        datatype=int16"
    )]
    Set {
        /// The image's name.
        name: String,
        /// A field and its value; several numbers are comma-separated. Applied in order, all
        /// or none.
        #[arg(required = true, value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        #[command(flatten)]
        mount: MountArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The file to hand a tool: the original while clean, the mount path otherwise.
    #[command(after_help = "Example:\n  mrinfo \"$(imgfs path t1)\"")]
    Path {
        /// The image's name.
        name: String,
        #[command(flatten)]
        mount: MountArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Override the state: clean (take the image as its original) or dirty.
    #[command(after_help = "Example:\n  imgfs mark t1 clean")]
    Mark {
        /// The image's name.
        name: String,
        /// The state to take: clean or dirty.
        #[arg(value_parser = ["clean", "dirty"])]
        state: String,
        #[command(flatten)]
        mount: MountArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove an image from the mount.
    #[command(after_help = "Example:\n  imgfs rm t1")]
    Rm {
        /// The image's name.
        name: String,
        #[command(flatten)]
        mount: MountArg,
    },
    /// Write an image to disk, in the format OUT's extension calls for.
    #[command(after_help = "Example:\n  imgfs save bold /tmp/bold16.nii.gz")]
    Save {
        /// The image's name.
        name: String,
        /// The file to write; its extension picks the format. Written to a temporary file
        /// beside it, then renamed into place.
        out: PathBuf,
        #[command(flatten)]
        mount: MountArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Counters of how the mount served files (passthrough opens, rendered reads, ...).
    #[command(after_help = "Example:\n  imgfs stats --json")]
    Stats {
        #[command(flatten)]
        mount: MountArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Mount privately, load images, run CMD with IMGFS_MOUNT set, unmount, exit with its status.
    #[command(
        after_help = "Example:\n  imgfs run --add t1=/data/t1.nii -- sh -c 'mrinfo \
        \"$(imgfs path t1)\"'\n\nExit status: the command's; 128+N if signal N killed it, 127 if \
        it is not found, 126 if it cannot be executed."
    )]
    Run {
        /// An image to load first, NAME=PATH or PATH (repeatable).
        #[arg(long = "add", value_name = "NAME=PATH")]
        add: Vec<String>,
        #[command(flatten)]
        writing: Writing,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

/// Whether users may write files into the mount, and how much.
#[derive(clap::Args, Debug, Clone, Copy)]
struct Writing {
    /// Refuse every write: no file can be created in the mount.
    #[arg(long)]
    read_only: bool,
    /// The most memory files written in the mount may hold (bytes, or with K, M, G, T:
    /// powers of 1024); past it a write fails with ENOSPC. Default: half the machine's RAM.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
}

/// A size such as `512M`: a whole number with an optional K, M, G or T suffix (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: the suffix must be K, M, G or T")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4096, 512M or 2G"))?;
    match n.checked_mul(1u64 << shift) {
        Some(0) => Err(format!("{text:?}: the limit must be more than 0")),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

/// The mount options `-o` takes, each as a flag of its own would set it.
#[derive(Debug, Default, PartialEq)]
struct MountFlags {
    allow_other: bool,
    no_passthrough: bool,
    debug: bool,
    read_only: bool,
}

/// Parses `-o` options; an unknown one is refused by name with the list of known ones.
fn parse_mount_options(options: &[String]) -> Result<MountFlags> {
    let mut flags = MountFlags::default();
    for option in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        match option {
            "allow_other" => flags.allow_other = true,
            "no_passthrough" => flags.no_passthrough = true,
            "debug" => flags.debug = true,
            "ro" => flags.read_only = true,
            "rw" => flags.read_only = false,
            other => bail!(
                "unknown mount option '{other}' (known: allow_other, ro, rw, debug, \
                 no_passthrough)"
            ),
        }
    }
    Ok(flags)
}

/// Runs the CLI; errors are printed as `imgfs: ...` with exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `RUST_LOG` decides, else warnings, or debug for `mount -d` / `-o debug`. A foreground
/// mount with `--log-file` logs there instead of stderr.
fn init_logging(verb: &Verb) {
    let mut default = "warn";
    let mut target = None;
    if let Verb::Mount {
        debug,
        options,
        log_file,
        foreground,
        daemon_ready,
        ..
    } = verb
    {
        let flags = parse_mount_options(options).unwrap_or_default();
        if *debug || flags.debug {
            default = "debug";
        }
        // A background daemon's stderr is its log file already.
        if let Some(path) = log_file
            && (*foreground || *debug || flags.debug)
            && !*daemon_ready
        {
            match open_log_file(path) {
                Ok(file) => target = Some(file),
                Err(e) => eprintln!("imgfs: {e:#}"),
            }
        }
    }
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    builder.format_timestamp_millis();
    if let Some(file) = target {
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder.init();
}

/// Opens a log file the user named, appending; created 0600 if missing.
fn open_log_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // A symbolic link at the log's name, perhaps planted in /tmp, is refused, not followed.
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow!(
                "log file {}: it is a symbolic link; name the file itself",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("log file {}", path.display())),
        })
}

/// Sends a request that asked for progress lines when `bar` is shown, and moves the bar as
/// they arrive.
fn call_showing(
    mount: Option<&Path>,
    request: &Request,
    bar: Option<indicatif::ProgressBar>,
) -> Result<Value> {
    let mut client = connect(mount)?;
    let reply = match &bar {
        Some(bar) => client.call_with_progress(request, &bar_progress(bar)),
        None => client.call(request),
    };
    finish_bar(bar, reply.is_ok());
    Ok(reply?)
}

fn connect(mount: Option<&Path>) -> Result<Client> {
    let dir = resolve_mount_dir(mount)?;
    Ok(Client::connect(&dir)?)
}

fn split_pair(text: &str) -> Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("'{text}' is not FIELD=VALUE"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// `NAME=PATH` or a bare `PATH`, with the path made absolute for the daemon.
fn image_arg(text: &str) -> Result<(String, PathBuf)> {
    let (name, path) = match text.split_once('=') {
        Some((name, path)) => (name.to_string(), PathBuf::from(path)),
        None => {
            let path = PathBuf::from(text);
            let name = name_from_path(&path)
                .ok_or_else(|| anyhow!("{text}: cannot take an image name from this path"))?;
            (name, path)
        }
    };
    let path = std::path::absolute(&path).with_context(|| path.display().to_string())?;
    Ok((name, path))
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

fn run(verb: Verb) -> Result<ExitCode> {
    match verb {
        Verb::Info { file, json } => {
            let loaded = format::io::load(&file)?;
            loaded.check_data()?;
            let info = info_json(&loaded);
            if json.json {
                print_json(&info);
            } else {
                print_info(&info);
            }
        }
        Verb::Convert { input, output, set } => {
            let mut image = Image::load(&input)?;
            let edits = set
                .iter()
                .map(|s| split_pair(s))
                .collect::<Result<Vec<_>>>()?;
            image
                .set_fields(&edits)
                .with_context(|| input.display().to_string())?;
            let bar = progress_bar(false, &format!("writing {}", output.display()));
            let saved = match &bar {
                Some(bar) => save_image_with_progress(&image, &output, &bar_progress(bar)),
                None => save_image(&image, &output),
            };
            finish_bar(bar, saved.is_ok());
            saved.with_context(|| {
                format!("writing {} from {}", output.display(), input.display())
            })?;
        }
        Verb::Mount {
            dir,
            foreground,
            options,
            allow_other,
            no_passthrough,
            gzip_cache_mib,
            writing,
            debug,
            log_file,
            timeout,
            daemon_ready,
        } => {
            let flags = parse_mount_options(&options)?;
            let dir = match dir {
                Some(d) => control::normalize(&d)?,
                None => control::default_mount_dir(),
            };
            let options = MountOptions {
                allow_other: allow_other || flags.allow_other,
                control: true,
                no_passthrough: no_passthrough || flags.no_passthrough,
                gzip_cache_bytes: gzip_cache_mib
                    .map(|mib| {
                        mib.checked_mul(1 << 20)
                            .context("--gzip-cache-mib is too large")
                    })
                    .transpose()?,
                read_only: writing.read_only || flags.read_only,
                max_memory: writing.max_memory.unwrap_or(0),
            };
            let debug = debug || flags.debug;
            if foreground || debug || daemon_ready {
                crate::fault::hang_if_asked();
                mount::run_daemon(&dir, &options, |dir| {
                    if daemon_ready {
                        println!("ready {}", dir.display());
                        let _ = std::io::stdout().flush();
                        detach_stdout();
                    } else {
                        let log = match &log_file {
                            Some(path) => path.display().to_string(),
                            None => "stderr".into(),
                        };
                        eprintln!(
                            "imgfs: mounted at {}; logging to {log}; Ctrl-C or `imgfs \
                             unmount {}` stops it",
                            dir.display(),
                            dir.display()
                        );
                    }
                })
                .with_context(|| format!("mounting {}", dir.display()))?;
                // A clean stop leaves no log behind when it was the default one.
                if daemon_ready && log_file.is_none() {
                    let _ = std::fs::remove_file(control::log_path(&dir)?);
                }
            } else {
                let timeout = std::time::Duration::try_from_secs_f64(timeout)
                    .map_err(|_| anyhow!("--timeout {timeout}: not a number of seconds"))?;
                let log = spawn_daemon(&dir, &options, log_file.as_deref(), timeout)?;
                println!("{}", dir.display());
                eprintln!(
                    "imgfs: mounted at {}; its log: {}",
                    dir.display(),
                    log.display()
                );
            }
        }
        Verb::Unmount { dir, mount } => unmount(dir.as_deref().or(mount.mount.as_deref()))?,
        Verb::Add {
            images,
            mount,
            json,
        } => {
            let mut client = connect(mount.mount.as_deref())?;
            let mut failed = false;
            let mut added = Vec::new();
            for arg in images {
                let result = image_arg(&arg).and_then(|(name, path)| {
                    Ok(client.call(&Request::Add {
                        path,
                        name: Some(name),
                    })?)
                });
                match result {
                    Ok(summary) if json.json => added.push(without_ok(summary)),
                    Ok(summary) => println!(
                        "{}\t{}",
                        summary["name"].as_str().unwrap_or_default(),
                        summary["path"].as_str().unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("imgfs: {e:#}");
                        failed = true;
                    }
                }
            }
            if json.json {
                print_json(&Value::Array(added));
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        Verb::Ls { json, mount } => {
            let reply = connect(mount.mount.as_deref())?.call(&Request::Ls {})?;
            if json.json {
                print_json(&reply["images"]);
            } else {
                print_ls(&reply["images"]);
                for plain in reply["plain"].as_array().into_iter().flatten() {
                    println!(
                        "{}: not an image, a plain file: {}",
                        plain["path"].as_str().unwrap_or_default(),
                        plain["why"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        Verb::Show { name, mount } => {
            let reply = connect(mount.mount.as_deref())?.call(&Request::Show { name })?;
            print_json(&without_ok(reply));
        }
        Verb::Set {
            name,
            fields,
            mount,
            json,
        } => {
            let fields = fields
                .iter()
                .map(|s| split_pair(s).map(|(k, v)| (k, Value::String(v))))
                .collect::<Result<Vec<_>>>()?;
            // Only a datatype change can take long: a pass over the data for their range.
            let converts = fields.iter().any(|(k, _)| k == "datatype");
            let bar = progress_bar(json.json || !converts, &format!("reading {name}'s values"));
            let request = Request::Set {
                name,
                fields,
                progress: bar.is_some(),
            };
            let reply = call_showing(mount.mount.as_deref(), &request, bar)?;
            if json.json {
                print_json(&without_ok(reply));
            } else {
                print_set(&reply);
            }
        }
        Verb::Path { name, mount, json } => {
            let reply = connect(mount.mount.as_deref())?.call(&Request::Path { name })?;
            if json.json {
                print_json(&without_ok(reply));
            } else {
                println!("{}", reply["path"].as_str().unwrap_or_default());
            }
        }
        Verb::Mark {
            name,
            state,
            mount,
            json,
        } => {
            let reply = connect(mount.mount.as_deref())?.call(&Request::Mark { name, state })?;
            if json.json {
                print_json(&without_ok(reply));
            } else {
                println!("{}", reply["state"].as_str().unwrap_or_default());
            }
        }
        Verb::Rm { name, mount } => {
            connect(mount.mount.as_deref())?.call(&Request::Rm { name })?;
        }
        Verb::Save {
            name,
            out,
            mount,
            json,
        } => {
            let out = std::path::absolute(&out)?;
            let bar = progress_bar(json.json, &format!("saving {name}"));
            let request = Request::Save {
                name,
                out,
                progress: bar.is_some(),
            };
            let reply = call_showing(mount.mount.as_deref(), &request, bar)?;
            if json.json {
                print_json(&without_ok(reply));
            } else {
                println!("{}", reply["path"].as_str().unwrap_or_default());
            }
        }
        Verb::Stats { mount, json } => {
            let reply = without_ok(connect(mount.mount.as_deref())?.call(&Request::Stats {})?);
            if json.json {
                print_json(&reply);
            } else {
                for (key, value) in reply.as_object().into_iter().flatten() {
                    println!("{key:<22}{value}");
                }
            }
        }
        Verb::Run {
            add,
            writing,
            command,
        } => return run_command(&add, writing, &command),
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr, only when stderr is a terminal and the output is not JSON: a
/// script or a log file gets no progress lines.
fn progress_bar(json: bool, label: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_string());
    Some(bar)
}

/// Leaves the bar at 100% after a success, and where it stopped before an error.
fn finish_bar(bar: Option<indicatif::ProgressBar>, succeeded: bool) {
    match bar {
        Some(bar) if succeeded => bar.finish(),
        Some(bar) => bar.abandon(),
        None => {}
    }
}

/// Progress reported to a bar.
fn bar_progress(bar: &indicatif::ProgressBar) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

/// An answer's own fields, without the protocol's `ok`.
fn without_ok(mut reply: Value) -> Value {
    if let Some(fields) = reply.as_object_mut() {
        fields.remove("ok");
    }
    reply
}

/// A field's value as a user writes it on the command line: numbers comma-separated.
fn as_written(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => x.to_string(),
            _ => n.to_string(),
        },
        Value::Array(items) => items.iter().map(as_written).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `imgfs set`'s report: the fields named, then those changed with them, then the state.
fn print_set(reply: &Value) {
    for change in reply["changed"].as_array().into_iter().flatten() {
        println!(
            "{}={}",
            change["field"].as_str().unwrap_or_default(),
            as_written(&change["value"])
        );
    }
    for change in reply["also_changed"].as_array().into_iter().flatten() {
        println!(
            "{}={}\t(changed as a consequence)",
            change["field"].as_str().unwrap_or_default(),
            as_written(&change["value"])
        );
    }
    println!("{}", reply["state"].as_str().unwrap_or_default());
}

/// After readiness is reported, stdout points at nothing: the parent has stopped reading.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto stdout with a valid open descriptor; no Rust object owns fd 1.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Starts `imgfs mount DIR --foreground` in its own session and waits until it is live, at most
/// `timeout`. Returns where it logs.
fn spawn_daemon(
    dir: &Path,
    options: &MountOptions,
    log_file: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<PathBuf> {
    let log = match log_file {
        Some(path) => std::path::absolute(path)?,
        None => {
            prune_stale_logs();
            control::log_path(dir)?
        }
    };
    let log_handle = match log_file {
        Some(_) => open_log_file(&log)?,
        None => control::create_log(&log)?,
    };
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mount")
        .arg(dir)
        .args(["--foreground", "--daemon-ready"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_handle);
    if options.allow_other {
        cmd.arg("--allow-other");
    }
    if options.no_passthrough {
        cmd.arg("--no-passthrough");
    }
    if options.read_only {
        cmd.arg("--read-only");
    }
    if options.max_memory > 0 {
        cmd.arg(format!("--max-memory={}", options.max_memory));
    }
    if let Some(path) = log_file {
        cmd.arg("--log-file").arg(std::path::absolute(path)?);
    }
    if let Some(bytes) = options.gzip_cache_bytes {
        cmd.arg(format!("--gzip-cache-mib={}", bytes >> 20));
    }
    // SAFETY: setsid is async-signal-safe and is all that runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(timeout) {
        Ok(line) if line.starts_with("ready") => return Ok(log),
        Ok(_) => {
            let _ = child.wait();
        }
        Err(_) => {
            // The daemon leads its own process group (setsid): it goes with everything it
            // started. Its watchdog, in a session of its own, unmounts whatever it mounted.
            // SAFETY: kill only sends a signal to our own child's group.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            bail!(
                "the mount daemon for {} did not become ready within {} s; it was stopped. \
                 Its log: {}",
                dir.display(),
                timeout.as_secs_f64(),
                log.display()
            )
        }
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let reason = logged
        .lines()
        .rev()
        .find(|l| l.starts_with("imgfs:"))
        .map(|l| l.trim_start_matches("imgfs:").trim().to_string())
        .unwrap_or_else(|| format!("see {}", log.display()));
    bail!("the mount daemon failed to start: {reason}")
}

/// How old a log of a mount that no longer runs may get before a new mount removes it.
const STALE_LOG_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the logs of mounts that ended without cleaning up (a crash, SIGKILL) once they are a
/// day old: a clean stop removes its own log, and these must not pile up either.
fn prune_stale_logs() {
    let Ok(dir) = control::control_dir() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let live = std::os::unix::net::UnixStream::connect(path.with_extension("sock")).is_ok();
        let old = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_LOG_AGE);
        if old && !live {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn unmount(dir: Option<&Path>) -> Result<()> {
    let dir = resolve_mount_dir(dir)?;
    match Client::connect(&dir) {
        Ok(mut client) => {
            let pid = client.call(&Request::Ping {})?["pid"].as_i64();
            client.call(&Request::Shutdown {})?;
            // Done once the daemon is gone too: it removes its socket and log on the way out.
            let gone = |pid: i64| libc::pid_t::try_from(pid).is_ok_and(process_has_exited);
            for _ in 0..200 {
                if !mount::is_mount_point(&dir) && pid.is_none_or(gone) {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            bail!(
                "{} is still mounted 5 s after the daemon was told to stop",
                dir.display()
            )
        }
        Err(e) => {
            if mount::is_mount_point(&dir) {
                mount::detach(&dir).with_context(|| dir.display().to_string())?;
                Ok(())
            } else {
                Err(e.into())
            }
        }
    }
}

/// Whether process `pid` has ended. A background daemon's parent is whatever reaps orphans
/// (init, a subreaper), which may take its time: measured here, this machine's init left the
/// ended daemon a zombie for 1.4-2 s, and `imgfs unmount` waited for it. A zombie has run
/// its exit, closed its files and removed its socket, so it counts as ended.
fn process_has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == -1 {
        return true;
    }
    // The state follows the command name, which is in parentheses and may hold any byte.
    std::fs::read(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.iter()
            .rposition(|&b| b == b')')
            .and_then(|end| stat.get(end + 2))
            .is_some_and(|state| matches!(state, b'Z' | b'X'))
    })
}

/// Shells' convention for a command that could not be started.
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_NOT_EXECUTABLE: u8 = 126;

fn run_command(add: &[String], writing: Writing, command: &[String]) -> Result<ExitCode> {
    let dir = control::control_dir()?.join(format!("run-{}", std::process::id()));
    // Removed last, whatever happens after this point: the mount below is dropped first.
    let _dir_guard = RemoveDir(dir.clone());
    let mount = Mount::with_options(
        &dir,
        &MountOptions {
            control: true,
            read_only: writing.read_only,
            max_memory: writing.max_memory.unwrap_or(0),
            ..MountOptions::default()
        },
    )
    .with_context(|| format!("mounting {}", dir.display()))?;
    for arg in add {
        let (name, path) = image_arg(arg)?;
        mount.add(&name, &path)?;
    }
    // As a shell does while it waits: an interrupt from the terminal reaches the command
    // (same process group) and imgfs outlives it to clean up; a SIGTERM or SIGHUP sent to
    // imgfs alone is passed on to the command.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let spawned = Command::new(&command[0])
        .args(&command[1..])
        .env("IMGFS_MOUNT", mount.dir())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            signals.handle().close();
            let code = match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::NotFound, _) => EXIT_NOT_FOUND,
                (std::io::ErrorKind::PermissionDenied, _) | (_, Some(libc::ENOEXEC)) => {
                    EXIT_NOT_EXECUTABLE
                }
                _ => 1,
            };
            let why = match code {
                EXIT_NOT_FOUND => "command not found".to_string(),
                EXIT_NOT_EXECUTABLE => format!("cannot execute: {e}"),
                _ => e.to_string(),
            };
            eprintln!("imgfs: {}: {why}", command[0]);
            mount.unmount()?;
            return Ok(ExitCode::from(code));
        }
    };
    let pid = child.id() as libc::pid_t;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGTERM || signal == signal_hook::consts::SIGHUP {
                // SAFETY: kill only sends a signal; the child is reaped only after this thread
                // has stopped, so the pid still names it.
                unsafe { libc::kill(pid, signal) };
            }
        }
    });
    // Waited for without reaping, so the pid names the command until the forwarder is gone.
    // SAFETY: info is a live, zeroed siginfo_t that waitid fills.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    }
    handle.close();
    let _ = forwarder.join();
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", command[0]))?;
    mount.unmount()?;
    Ok(ExitCode::from(exit_code(status)))
}

/// A command's status as a shell reports it: its exit code, or 128 + N after signal N.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 255,
    }
}

/// Removes an (empty) directory when dropped: `imgfs run` leaves no mount point behind.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `imgfs info --json`: the header as nibabel names it.
pub fn info_json(loaded: &LoadedFile) -> Value {
    let h = &loaded.header;
    let (slope, inter) = match h.slope_inter() {
        Some((s, i)) => (json!(s), json!(i)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "path": loaded.file_map.header,
        "format": h.flavor().name(),
        "file_kind": loaded.file_map.kind_name(),
        "compressed": loaded.file_map.compressed,
        "byte_order": h.order().name(),
        "shape": loaded.shape,
        "dtype": loaded.dtype.name(),
        "datatype": loaded.dtype.code(),
        "zooms": h.zooms(),
        "pixdim": h.pixdim(),
        "qform_code": h.qform_code(),
        "sform_code": h.sform_code(),
        "affine": loaded.affine(),
        "scl_slope": slope,
        "scl_inter": inter,
        "vox_offset": h.vox_offset_raw(),
        "descrip": h.descrip(),
        "extensions": loaded.extensions.iter()
            .map(|e| json!({"code": e.code, "size": e.disk_size()}))
            .collect::<Vec<_>>(),
        "header": h.fields_json(),
    })
}

fn print_info(info: &Value) {
    let line = |k: &str| println!("{k:<12}{}", compact(&info[k]));
    for k in [
        "path",
        "format",
        "file_kind",
        "compressed",
        "byte_order",
        "shape",
        "dtype",
        "zooms",
        "qform_code",
        "sform_code",
        "scl_slope",
        "scl_inter",
        "vox_offset",
        "descrip",
    ] {
        line(k);
    }
    println!("affine");
    for row in info["affine"].as_array().into_iter().flatten() {
        let cells: Vec<String> = row
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("{:>12.6}", x.as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!("  {}", cells.join(" "));
    }
    line("extensions");
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_ls(images: &Value) {
    let list = images.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return;
    }
    println!(
        "{:<20} {:<12} {:<18} {:<16} {:<10} {:>12} {:>12}  ORIGIN / STATE",
        "NAME", "SERVED", "FORMAT", "SHAPE", "DTYPE", "SIZE", "MEMORY"
    );
    for img in list {
        let shape: Vec<String> = img["shape"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d.to_string())
            .collect();
        println!(
            "{:<20} {:<12} {:<18} {:<16} {:<10} {:>12} {:>12}  {}",
            compact(&img["name"]),
            compact(&img["served_as"]),
            compact(&img["format"]),
            shape.join("x"),
            compact(&img["dtype"]),
            compact(&img["size"]),
            compact(&img["memory_bytes"]),
            compact(&img["origin"]),
        );
        println!("{:<20} {}", "", compact(&img["state"]));
    }
}

#[cfg(test)]
mod tests {
    use super::process_has_exited;

    #[test]
    fn a_child_that_exited_but_was_not_reaped_counts_as_exited() {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(0) };
        }
        // Not reaped yet: the process still exists as a zombie.
        let mut waited = false;
        for _ in 0..200 {
            if process_has_exited(child) {
                waited = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(
            unsafe { libc::kill(child, 0) },
            0,
            "still a zombie, not reaped"
        );
        assert!(waited, "a zombie is an ended process");
        let mut status = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(process_has_exited(child));
        // SAFETY: getpid has no preconditions.
        assert!(!process_has_exited(unsafe { libc::getpid() }));
    }
}
