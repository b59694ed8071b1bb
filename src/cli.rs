//! The command line: parses arguments, calls the library or the control socket, prints.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::catalog::name_from_path;
use crate::control::client::Client;
use crate::control::protocol::Request;
use crate::control::{self, resolve_mount_dir};
use crate::format::{self, LoadedFile};
use crate::image::Image;
use crate::mount::{self, Mount, MountOptions};
use crate::render::save_image;

#[derive(Parser)]
#[command(
    name = "imgfs",
    version,
    about = "Serve in-memory NIfTI and Analyze images as files, without temporary copies"
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Print an image file's header: format, byte order, dims, dtype, affine, scaling, extensions.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write an image in the format OUT's extension calls for, with header edits.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// A header edit FIELD=VALUE, with nibabel's field names (repeatable).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Mount DIR (default: $XDG_RUNTIME_DIR/imgfs, else /tmp/imgfs-$UID); returns once live.
    Mount {
        dir: Option<PathBuf>,
        /// Stay in the foreground instead of going to the background.
        #[arg(long)]
        foreground: bool,
        /// Let other users read the mount.
        #[arg(long)]
        allow_other: bool,
        /// Serve clean files by forwarding reads instead of kernel passthrough.
        #[arg(long)]
        no_passthrough: bool,
        #[command(flatten)]
        writing: Writing,
        /// Internal: report readiness on stdout, then detach from it.
        #[arg(long, hide = true)]
        daemon_ready: bool,
    },
    /// Unmount DIR and stop its daemon.
    Unmount { dir: Option<PathBuf> },
    /// Load images: NAME=PATH, or PATH (named after the file stem). The data stay lazy.
    Add {
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// List the images: name, state with its reasons, format, dims, dtype, size, origin.
    Ls {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Show one image's summary, header fields, affine and extensions as JSON.
    Show {
        name: String,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Edit header fields by nibabel's names: descrip=..., datatype=int16, sform_code=2, ...
    Set {
        name: String,
        #[arg(required = true, value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// The file to hand a tool: the original while clean, the mount path otherwise.
    Path {
        name: String,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Override the state: clean (take the image as its original) or dirty.
    Mark {
        name: String,
        #[arg(value_parser = ["clean", "dirty"])]
        state: String,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Remove an image from the mount.
    Rm {
        name: String,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Write an image to disk, in the format OUT's extension calls for.
    Save {
        name: String,
        out: PathBuf,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Counters of how the mount served files (passthrough opens, rendered reads, ...).
    Stats {
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Mount privately, load images, run CMD with IMGFS_MOUNT set, unmount, exit with its status.
    Run {
        /// An image to load first, NAME=PATH or PATH (repeatable).
        #[arg(long = "add", value_name = "NAME=PATH")]
        add: Vec<String>,
        #[command(flatten)]
        writing: Writing,
        #[arg(required = true, last = true)]
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

impl Writing {
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.read_only {
            args.push("--read-only".to_string());
        }
        if let Some(max) = self.max_memory {
            args.push(format!("--max-memory={max}"));
        }
        args
    }
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

/// Runs the CLI; errors are printed as `imgfs: ...` with exit code 1.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgfs: {e:#}");
            ExitCode::from(1)
        }
    }
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
            if json {
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
            save_image(&image, &output).with_context(|| {
                format!("writing {} from {}", output.display(), input.display())
            })?;
        }
        Verb::Mount {
            dir,
            foreground,
            allow_other,
            no_passthrough,
            writing,
            daemon_ready,
        } => {
            let dir = match dir {
                Some(d) => control::normalize(&d)?,
                None => control::default_mount_dir(),
            };
            let options = MountOptions {
                allow_other,
                control: true,
                no_passthrough,
                read_only: writing.read_only,
                max_memory: writing.max_memory.unwrap_or(0),
            };
            if foreground {
                mount::run_daemon(&dir, &options, |dir| {
                    if daemon_ready {
                        println!("ready {}", dir.display());
                        let _ = std::io::stdout().flush();
                        detach_stdout();
                    } else {
                        eprintln!("imgfs: mounted at {}", dir.display());
                    }
                })
                .with_context(|| format!("mounting {}", dir.display()))?;
            } else {
                spawn_daemon(&dir, allow_other, no_passthrough, writing)?;
                println!("{}", dir.display());
            }
        }
        Verb::Unmount { dir } => unmount(dir.as_deref())?,
        Verb::Add { images, mount } => {
            let mut client = connect(mount.as_deref())?;
            let mut failed = false;
            for arg in images {
                let result = image_arg(&arg).and_then(|(name, path)| {
                    Ok(client.call(&Request::Add {
                        path,
                        name: Some(name),
                    })?)
                });
                match result {
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
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        Verb::Ls { json, mount } => {
            let reply = connect(mount.as_deref())?.call(&Request::Ls {})?;
            if json {
                print_json(&reply["images"]);
            } else {
                print_ls(&reply["images"]);
            }
        }
        Verb::Show { name, mount } => {
            let mut reply = connect(mount.as_deref())?.call(&Request::Show { name })?;
            reply.as_object_mut().map(|o| o.remove("ok"));
            print_json(&reply);
        }
        Verb::Set {
            name,
            fields,
            mount,
        } => {
            let fields = fields
                .iter()
                .map(|s| split_pair(s).map(|(k, v)| (k, Value::String(v))))
                .collect::<Result<Vec<_>>>()?;
            let reply = connect(mount.as_deref())?.call(&Request::Set { name, fields })?;
            println!("{}", reply["state"].as_str().unwrap_or_default());
        }
        Verb::Path { name, mount } => {
            let reply = connect(mount.as_deref())?.call(&Request::Path { name })?;
            println!("{}", reply["path"].as_str().unwrap_or_default());
        }
        Verb::Mark { name, state, mount } => {
            let reply = connect(mount.as_deref())?.call(&Request::Mark { name, state })?;
            println!("{}", reply["state"].as_str().unwrap_or_default());
        }
        Verb::Rm { name, mount } => {
            connect(mount.as_deref())?.call(&Request::Rm { name })?;
        }
        Verb::Save { name, out, mount } => {
            let out = std::path::absolute(&out)?;
            connect(mount.as_deref())?.call(&Request::Save { name, out })?;
        }
        Verb::Stats { mount } => {
            let mut reply = connect(mount.as_deref())?.call(&Request::Stats {})?;
            reply.as_object_mut().map(|o| o.remove("ok"));
            print_json(&reply);
        }
        Verb::Run {
            add,
            writing,
            command,
        } => return run_command(&add, writing, &command),
    }
    Ok(ExitCode::SUCCESS)
}

/// After readiness is reported, stdout points at nothing: the parent has stopped reading.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto stdout with a valid open descriptor; no Rust object owns fd 1.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Starts `imgfs mount DIR --foreground` in its own session and waits until it is live.
fn spawn_daemon(
    dir: &Path,
    allow_other: bool,
    no_passthrough: bool,
    writing: Writing,
) -> Result<()> {
    let log = control::log_path(dir)?;
    let log_file = control::create_log(&log)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mount")
        .arg(dir)
        .args(["--foreground", "--daemon-ready"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    if allow_other {
        cmd.arg("--allow-other");
    }
    if no_passthrough {
        cmd.arg("--no-passthrough");
    }
    cmd.args(writing.args());
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
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.starts_with("ready") {
        return Ok(());
    }
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let reason = logged
        .lines()
        .rev()
        .find(|l| l.starts_with("imgfs:"))
        .map(|l| l.trim_start_matches("imgfs:").trim().to_string())
        .unwrap_or_else(|| format!("see {}", log.display()));
    bail!("the mount daemon failed to start: {reason}")
}

fn unmount(dir: Option<&Path>) -> Result<()> {
    let dir = resolve_mount_dir(dir)?;
    match Client::connect(&dir) {
        Ok(mut client) => {
            client.call(&Request::Shutdown {})?;
            for _ in 0..200 {
                if !mount::is_mount_point(&dir) {
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

fn run_command(add: &[String], writing: Writing, command: &[String]) -> Result<ExitCode> {
    let dir = control::control_dir()?.join(format!("run-{}", std::process::id()));
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
    let status = Command::new(&command[0])
        .args(&command[1..])
        .env("IMGFS_MOUNT", mount.dir())
        .status()
        .with_context(|| format!("running {}", command[0]))?;
    mount.unmount()?;
    let _ = std::fs::remove_dir(&dir);
    Ok(match status.code() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => ExitCode::from(128 + 1),
    })
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
        "{:<20} {:<12} {:<18} {:<16} {:<10} {:>12}  ORIGIN / STATE",
        "NAME", "SERVED", "FORMAT", "SHAPE", "DTYPE", "SIZE"
    );
    for img in list {
        let shape: Vec<String> = img["shape"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d.to_string())
            .collect();
        println!(
            "{:<20} {:<12} {:<18} {:<16} {:<10} {:>12}  {}",
            compact(&img["name"]),
            compact(&img["served_as"]),
            compact(&img["format"]),
            shape.join("x"),
            compact(&img["dtype"]),
            compact(&img["size"]),
            compact(&img["origin"]),
        );
        println!("{:<20} {}", "", compact(&img["state"]));
    }
}
