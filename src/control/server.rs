//! The daemon's side of the control socket: one thread per connection, one response per
//! request, and a bad request never stops the mount.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::fdpass;
use super::protocol::{
    Counters, Done, ErrorKind, ExtensionInfo, Failure, FieldChange, Images, PathAnswer, PlainFile,
    Pong, ProgressCount, ProgressLine, Reply, Request, SetAnswer, Shown, ShuttingDown, field_text,
};
use crate::catalog::{Catalog, CatalogError};
use crate::format::{ByteOrder, DataType, Extension, Flavor, Header};
use crate::image::{FileIdentity, FileSource, Image, ImageError, VoxelBuffer};
use crate::progress::{Progress, Silent};
use crate::render::{Rendering, save_image_with_progress, served_flavor};

/// Longest request line accepted; real requests are a few KiB.
const MAX_LINE: usize = 16 << 20;

/// Connections served at once. Each holds a thread and up to a read buffer and a line, so a
/// client opening thousands would exhaust threads and memory; those past the cap get a refusal
/// line and are closed, and a slot frees as soon as a connection ends.
const MAX_CONNECTIONS: usize = 256;

/// Descriptors one request line may bring before its newline; `put` needs one.
const MAX_LINE_FDS: usize = 16;

/// What the daemon does on `shutdown`.
pub type Shutdown = Arc<dyn Fn() + Send + Sync>;

/// Binds the control socket, replacing a stale one left by a dead daemon.
pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a mount is already answering on {}", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests on `listener` from a background thread.
pub fn spawn(
    listener: UnixListener,
    catalog: Arc<Catalog>,
    shutdown: Option<Shutdown>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("imgfs-control".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Out of descriptors (EMFILE) fails every accept until one closes:
                        // pause instead of spinning.
                        log::warn!("control socket: accept failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    refuse(
                        &stream,
                        ErrorKind::Busy,
                        &format!(
                            "too many connections to this mount ({MAX_CONNECTIONS} at once); \
                             close some and retry"
                        ),
                    );
                    continue;
                }
                let slot = Slot(active.clone());
                let catalog = catalog.clone();
                let shutdown = shutdown.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("imgfs-conn".into())
                        .spawn(move || {
                            let _slot = slot;
                            // A panic outside a request's own handler (which `respond` catches)
                            // ends this connection only.
                            let served =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    serve_connection(stream, &catalog, shutdown.as_ref())
                                }));
                            if served.is_err() {
                                log::error!(
                                    "control connection ended by an internal error (panic)"
                                );
                            }
                        });
                if let Err(e) = spawned {
                    log::warn!("control socket: cannot start a connection thread: {e}");
                }
            }
        })?;
    Ok(())
}

/// One of the `MAX_CONNECTIONS` places, given back when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection that will not be served with one error line.
fn refuse(stream: &UnixStream, kind: ErrorKind, message: &str) {
    let out = answer_line(&Err(Failure::new(kind, message)));
    let _ = fdpass::send_with_fds(stream, &out, &[]);
}

/// A request's answer as one line: `{"ok": true, ...}` or `{"ok": false, "kind", "error"}`.
fn answer_line(answer: &Result<Value, Failure>) -> Vec<u8> {
    let mut out = match answer {
        Ok(body) => serde_json::to_vec(&Reply { ok: true, body }),
        Err(failure) => serde_json::to_vec(&Reply {
            ok: false,
            body: failure,
        }),
    }
    .expect("answers serialize");
    out.push(b'\n');
    out
}

fn serve_connection(stream: UnixStream, catalog: &Catalog, shutdown: Option<&Shutdown>) {
    let mut pending: Vec<u8> = Vec::new();
    // How much of `pending` is known to hold no newline: each byte is searched once, so a long
    // line costs linear time.
    let mut searched = 0;
    // Bytes of the stream consumed before `pending` starts.
    let mut consumed: u64 = 0;
    // Each descriptor with the stream position of the first byte it arrived with: it belongs
    // to the request line holding that byte, and to no other.
    let mut fds: VecDeque<(u64, OwnedFd)> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(found) = pending[searched..].iter().position(|&b| b == b'\n') {
            let end = searched + found;
            searched = 0;
            let line: Vec<u8> = pending.drain(..=end).collect();
            consumed += line.len() as u64;
            let mut line_fds = VecDeque::new();
            while fds.front().is_some_and(|(at, _)| *at < consumed) {
                line_fds.push_back(fds.pop_front().expect("checked").1);
            }
            // Descriptors the request did not use are closed with `line_fds` here.
            let response = respond(&line[..end], catalog, &mut line_fds, &stream);
            if fdpass::send_with_fds(&stream, &answer_line(&response), &[]).is_err() {
                return;
            }
            let stopping = response
                .as_ref()
                .is_ok_and(|v| v.get("shutting_down") == Some(&Value::Bool(true)));
            if stopping && let Some(stop) = shutdown {
                stop();
            }
        }
        searched = pending.len();
        if pending.len() > MAX_LINE {
            // The connection closes: what the client still sends of this line goes nowhere.
            refuse(
                &stream,
                ErrorKind::BadRequest,
                &format!("request line too long (over {MAX_LINE} bytes); connection closed"),
            );
            return;
        }
        if fds.len() > MAX_LINE_FDS {
            refuse(
                &stream,
                ErrorKind::BadRequest,
                &format!(
                    "more than {MAX_LINE_FDS} file descriptors sent with one request line; \
                     connection closed"
                ),
            );
            return;
        }
        match fdpass::recv_with_fds(&stream, &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok((n, received)) => {
                let at = consumed + pending.len() as u64;
                fds.extend(received.into_iter().map(|fd| (at, fd)));
                pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

fn respond(
    line: &[u8],
    catalog: &Catalog,
    fds: &mut VecDeque<OwnedFd>,
    stream: &UnixStream,
) -> Result<Value, Failure> {
    let request: Request = serde_json::from_slice(line)
        .map_err(|e| Failure::new(ErrorKind::BadRequest, format!("bad request: {e}")))?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handle(request, catalog, fds, stream)
    }))
    .unwrap_or_else(|_| {
        Err(Failure::new(
            ErrorKind::Internal,
            "internal error while handling the request",
        ))
    })
}

/// The kind of failure a catalog error is.
fn failure(e: CatalogError) -> Failure {
    let kind = match &e {
        CatalogError::UnknownName(_) => ErrorKind::UnknownName,
        CatalogError::NameTaken(_) => ErrorKind::NameTaken,
        CatalogError::BadName(..) => ErrorKind::BadName,
        CatalogError::Format(_) => ErrorKind::BadFile,
        CatalogError::Image { source, .. } => match source {
            ImageError::Format(_) => ErrorKind::BadFile,
            ImageError::DataUnavailable(_) => ErrorKind::Unavailable,
            ImageError::Field(_) | ImageError::Conversion(_) | ImageError::Refused(_) => {
                ErrorKind::Refused
            }
        },
    };
    Failure::new(kind, e.to_string())
}

/// `save`'s failure: an error on a file beside `out` is the target's (`io`), others are the
/// image's own.
fn save_failure(e: CatalogError, out: &Path) -> Failure {
    let on_target = match &e {
        CatalogError::Image {
            source: ImageError::Format(f),
            ..
        } => f.path().parent() == out.parent(),
        _ => false,
    };
    if on_target {
        Failure::new(ErrorKind::Io, e.to_string())
    } else {
        failure(e)
    }
}

fn bad_request(message: String) -> Failure {
    Failure::new(ErrorKind::BadRequest, message)
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("answers serialize")
}

fn absolute(path: &Path) -> Result<(), Failure> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(bad_request(format!(
            "{}: the daemon needs an absolute path",
            path.display()
        )))
    }
}

fn handle(
    request: Request,
    catalog: &Catalog,
    fds: &mut VecDeque<OwnedFd>,
    stream: &UnixStream,
) -> Result<Value, Failure> {
    Ok(match request {
        Request::Ping {} => to_value(Pong {
            mount: catalog.mount_dir().to_path_buf(),
            pid: std::process::id(),
        }),
        Request::Add { path, name } => {
            absolute(&path)?;
            let name = match name {
                Some(n) => n,
                None => crate::catalog::name_from_path(&path).ok_or_else(|| {
                    Failure::new(
                        ErrorKind::BadName,
                        format!(
                            "{}: cannot take an image name from this path",
                            path.display()
                        ),
                    )
                })?,
            };
            to_value(catalog.add(&name, &path).map_err(failure)?)
        }
        Request::Ls {} => to_value(Images {
            images: catalog.list(),
            plain: catalog
                .plain_files()
                .into_iter()
                .map(|(path, why)| PlainFile { path, why })
                .collect(),
        }),
        Request::Show { name } => to_value(show(catalog, &name)?),
        Request::Set {
            name,
            fields,
            progress,
        } => {
            let report = progress_lines(stream);
            let progress: &dyn Progress = if progress { &report } else { &Silent };
            to_value(set(catalog, &name, &fields, progress)?)
        }
        Request::SetAffine { name, affine } => {
            if affine.iter().flatten().any(|x| !x.is_finite()) {
                return Err(Failure::new(
                    ErrorKind::Refused,
                    "the affine must hold finite numbers",
                ));
            }
            catalog
                .edit(&name, |img| {
                    img.set_affine(affine);
                    Ok(())
                })
                .map_err(failure)?;
            to_value(catalog.summary(&name).map_err(failure)?)
        }
        Request::Path { name } => to_value(PathAnswer {
            path: catalog.path(&name).map_err(failure)?,
        }),
        Request::Mark { name, state } => {
            match state.as_str() {
                "clean" => catalog.edit(&name, |img| {
                    img.mark_clean();
                    Ok(())
                }),
                "dirty" => catalog.edit(&name, |img| {
                    img.mark_dirty();
                    Ok(())
                }),
                other => {
                    return Err(bad_request(format!(
                        "unknown state '{other}': use clean or dirty"
                    )));
                }
            }
            .map_err(failure)?;
            to_value(catalog.summary(&name).map_err(failure)?)
        }
        Request::Rm { name } => {
            catalog.remove(&name).map_err(failure)?;
            to_value(Done {})
        }
        Request::Save {
            name,
            out,
            progress,
        } => {
            absolute(&out)?;
            let report = progress_lines(stream);
            let progress: &dyn Progress = if progress { &report } else { &Silent };
            catalog
                .with_image(&name, |image| {
                    save_image_with_progress(image, &out, progress)
                })
                .and_then(|saved| {
                    saved.map_err(|source| CatalogError::Image {
                        name: name.clone(),
                        source,
                    })
                })
                .map_err(|e| save_failure(e, &out))?;
            to_value(PathAnswer { path: out })
        }
        Request::Put {
            name,
            header,
            affine,
            extensions,
            shape,
            dtype,
            data_offset,
            replace,
            in_place,
        } => {
            let fd = fds.pop_front().ok_or_else(|| {
                bad_request("put needs the data's file descriptor sent with the request".into())
            })?;
            let wire = Wire {
                header: &header,
                affine,
                extensions: &extensions,
                shape: &shape,
                dtype: &dtype,
                data_offset,
                in_place,
            };
            let image = image_from_wire(&name, &wire, fd).map_err(bad_request)?;
            let summary = if replace {
                catalog.replace(&name, image)
            } else {
                catalog.insert(&name, image)
            };
            to_value(summary.map_err(failure)?)
        }
        Request::Stats {} => {
            let s = &catalog.stats;
            to_value(Counters {
                passthrough_opens: s.passthrough_opens.load(Ordering::Relaxed),
                rendered_opens: s.rendered_opens.load(Ordering::Relaxed),
                forwarded_reads: s.forwarded_reads.load(Ordering::Relaxed),
                rendered_reads: s.rendered_reads.load(Ordering::Relaxed),
                images: catalog.names().len(),
                kernel_held_versions: catalog.kernel_held_versions(),
            })
        }
        Request::Shutdown {} => to_value(ShuttingDown {
            shutting_down: true,
        }),
    })
}

/// Progress told to the client as `{"progress": ...}` lines before the answer. It is reported
/// while the image's lock is held, so it never waits for the client: a line that does not fit
/// in the socket's buffer now is dropped (a line this short is sent whole or not at all), and
/// a client that stopped reading only loses progress lines while the work, and every other
/// request on the image, goes on.
fn progress_lines(stream: &UnixStream) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        let line = ProgressLine {
            progress: ProgressCount { done, total },
        };
        let mut out = serde_json::to_vec(&line).expect("progress serializes");
        out.push(b'\n');
        let _ = fdpass::try_send(stream, &out);
    }
}

/// Applies a `set`, and reports each field the request named with its new value, then the
/// fields that changed as a consequence.
fn set(
    catalog: &Catalog,
    name: &str,
    fields: &[(String, Value)],
    progress: &dyn Progress,
) -> Result<SetAnswer, Failure> {
    let edits: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.clone(), field_text(v)))
        .collect();
    let (changed, also_changed) = catalog
        .edit(name, |img| {
            let before = img.header().clone();
            img.set_fields_with_progress(&edits, progress)?;
            let after = img.header();
            let value = |field: &str| after.get(field).map(|v| v.to_json()).unwrap_or(Value::Null);
            let mut named: Vec<&str> = Vec::new();
            for (field, _) in &edits {
                if !named.contains(&field.as_str()) {
                    named.push(field);
                }
            }
            let changed = named
                .iter()
                .map(|f| FieldChange {
                    field: f.to_string(),
                    value: value(f),
                })
                .collect::<Vec<_>>();
            let also = after
                .differing_fields(&before)
                .into_iter()
                .filter(|f| !named.contains(f))
                .map(|f| FieldChange {
                    field: f.to_string(),
                    value: value(f),
                })
                .collect::<Vec<_>>();
            Ok((changed, also))
        })
        .map_err(failure)?;
    Ok(SetAnswer {
        summary: catalog.summary(name).map_err(failure)?,
        changed,
        also_changed,
    })
}

fn show(catalog: &Catalog, name: &str) -> Result<Shown, Failure> {
    let summary = catalog.summary(name).map_err(failure)?;
    let (header, affine, extensions) = catalog
        .edit(name, |img| {
            // Inside the edit, with the image's lock held: a test shows a panic here leaves the
            // image usable.
            crate::fault::panic_if_asked(|| Some(name.to_string()));
            let exts: Vec<ExtensionInfo> = img
                .extensions()
                .iter()
                .map(|e| ExtensionInfo {
                    code: e.code,
                    size: e.disk_size(),
                })
                .collect();
            Ok((img.header().fields_json(), *img.affine(), exts))
        })
        .map_err(failure)?;
    Ok(Shown {
        summary,
        header,
        affine,
        extensions,
    })
}

/// A put's fields that describe the image.
struct Wire<'a> {
    header: &'a str,
    affine: crate::format::Affine,
    extensions: &'a [super::protocol::WireExtension],
    shape: &'a [u64],
    dtype: &'a str,
    data_offset: u64,
    in_place: bool,
}

fn image_from_wire(name: &str, wire: &Wire, fd: OwnedFd) -> Result<Image, String> {
    let bytes = BASE64
        .decode(wire.header)
        .map_err(|e| format!("header is not base64: {e}"))?;
    let mut header = Header::parse(&bytes).map_err(|e| format!("header: {e}"))?;
    let dtype =
        DataType::from_name(wire.dtype).ok_or_else(|| format!("unknown dtype '{}'", wire.dtype))?;
    let shape = wire.shape;
    if shape.is_empty() || shape.len() > 7 || shape.contains(&0) {
        return Err(format!(
            "shape {shape:?} must have 1 to 7 positive dimensions"
        ));
    }
    let extensions = wire
        .extensions
        .iter()
        .map(|e| {
            Ok(Extension {
                code: e.code,
                content: BASE64
                    .decode(&e.content)
                    .map_err(|err| format!("extension content is not base64: {err}"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let file = std::fs::File::from(fd);
    check_sealed(&file)?;
    if wire.in_place {
        // The served file's data start where the sent data do.
        header.set_single_file(true);
        header.set_vox_offset(wire.data_offset);
    }
    let build = |file: &std::fs::File| {
        // SAFETY: `check_sealed` saw F_SEAL_SHRINK, and a seal can never be removed: the memfd
        // keeps at least the length mapped here for the map's whole life, so no read of it can
        // fault (SIGBUS). The client may still write to it; that changes the voxel values
        // served, never our own memory, as the map is only read through plain byte copies.
        let map =
            unsafe { memmap2::Mmap::map(file) }.map_err(|e| format!("cannot map the data: {e}"))?;
        let data = VoxelBuffer::mapped(dtype, shape, map, wire.data_offset)?;
        Image::from_parts(header.clone(), wire.affine, extensions.clone(), data)
            .map_err(|e| e.to_string())
    };
    let image = build(&file)?;
    if !wire.in_place {
        return Ok(image);
    }
    let (prefix, size) = served_layout(&image, &file, wire.data_offset)?;
    // Our own shared mapping of a writable descriptor would keep the memfd from being sealed
    // against writing: let it go, seal, and map again.
    drop(image);
    let served = seal_in_place(file, (&prefix, size), name)?;
    let mut image = build(&served.file)?;
    image.set_served_file(Arc::new(served));
    Ok(image)
}

/// The page size `in_place` data offsets are multiples of, whatever the machine's: the data
/// can then be mapped on their own by any reader.
const PAGE: u64 = 4096;

/// The served file's bytes before the data (header, extensions, padding), and its size, when a
/// put's memfd can be laid out as the served file: its data at `data_offset`, a page multiple
/// where the served layout puts them, and nothing after them.
fn served_layout(
    image: &Image,
    file: &std::fs::File,
    data_offset: u64,
) -> Result<(Vec<u8>, u64), String> {
    let header = image.header();
    if header.flavor() == Flavor::Analyze {
        return Err("in_place needs a NIfTI header: an Analyze header has no vox_offset".into());
    }
    if header.order() != ByteOrder::native() {
        return Err(
            "in_place needs a header in this machine's byte order: the data are sent \
                    in it, and the served file stores them in the header's"
                .into(),
        );
    }
    let rendering = Rendering::of(image)?;
    let prefix = rendering.prefix();
    let exts = image.extensions();
    let needed = served_flavor(image).min_single_offset()
        + exts.iter().map(|e| e.disk_size() as u64).sum::<u64>();
    // nibabel reads every byte between the extensions and the data as more extensions, and
    // fails on zero padding: with extensions, the data must follow the last one directly.
    let padded = !exts.is_empty() && data_offset != needed;
    if !data_offset.is_multiple_of(PAGE) || prefix.len() as u64 != data_offset || padded {
        return Err(format!(
            "in_place: data_offset {data_offset} cannot be where the served file's data start: \
             the header and extensions take {needed} bytes, and the data must follow them at a \
             multiple of {PAGE}: right after them when there are extensions, else at most 64 \
             KiB after them"
        ));
    }
    let size = file
        .metadata()
        .map_err(|e| format!("the memfd sent with put cannot be examined: {e}"))?
        .len();
    if size != rendering.size() {
        return Err(format!(
            "in_place: the memfd holds {size} bytes, but the served file is {} (data_offset \
             plus the data): nothing may follow the data",
            rendering.size()
        ));
    }
    Ok((prefix.to_vec(), size))
}

/// Writes `prefix` (the served header and extensions) into the bytes before the data of a
/// put's memfd and seals it against writing and growing, so that the memfd is the served file,
/// byte for byte, for good: served from directly (by passthrough where the kernel allows),
/// with no copy.
fn seal_in_place(
    file: std::fs::File,
    (prefix, size): (&[u8], u64),
    name: &str,
) -> Result<FileSource, String> {
    use std::os::unix::fs::FileExt;
    let frozen = libc::F_SEAL_WRITE | libc::F_SEAL_GROW;
    let seals = seals_of(&file)?;
    // A retry of the same put (another name) finds the header written and sealed already.
    if seals & libc::F_SEAL_WRITE == 0 {
        file.write_all_at(prefix, 0)
            .map_err(|e| format!("in_place: cannot write the header into the memfd: {e}"))?;
    }
    if seals & frozen != frozen {
        // SAFETY: F_ADD_SEALS only adds seals to a descriptor we own; no memory is involved.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, frozen) } < 0 {
            let e = io::Error::last_os_error();
            let why = if e.raw_os_error() == Some(libc::EBUSY) {
                "it is still mapped writable and shared somewhere".to_string()
            } else {
                e.to_string()
            };
            return Err(format!(
                "in_place: the memfd cannot be sealed against writing and growing ({why})"
            ));
        }
    }
    // Sealed now: what is read here is what every reader will get.
    let mut written = vec![0; prefix.len()];
    file.read_exact_at(&mut written, 0)
        .map_err(|e| format!("in_place: cannot read the memfd back: {e}"))?;
    if written != prefix {
        return Err(
            "in_place: the memfd's bytes before the data are not the served header: it was \
             written to by someone else, or sealed before the header was in it"
                .into(),
        );
    }
    let meta = file
        .metadata()
        .map_err(|e| format!("the memfd sent with put cannot be examined: {e}"))?;
    if meta.len() != size {
        return Err(format!(
            "in_place: the memfd grew to {} bytes before it was sealed; the served file is {size}",
            meta.len()
        ));
    }
    let data_offset = prefix.len() as u64;
    Ok(FileSource::new(
        file,
        PathBuf::from(format!("the memfd put as '{name}'")),
        (data_offset, meta.len() - data_offset),
        ByteOrder::native(),
        FileIdentity::of(&meta),
    ))
}

/// The seals of a put's memfd.
fn seals_of(file: &std::fs::File) -> Result<i32, String> {
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(format!(
            "the descriptor sent with put is not a memfd that allows sealing ({}): create it \
             with MFD_ALLOW_SEALING and add F_SEAL_SHRINK",
            io::Error::last_os_error()
        ));
    }
    Ok(seals)
}

/// Refuses a put's descriptor unless it is a memfd sealed against shrinking: a mapping of a
/// file that can shrink kills its reader with SIGBUS, and that reader would be the daemon.
fn check_sealed(file: &std::fs::File) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let kind = file
        .metadata()
        .map_err(|e| format!("the descriptor sent with put cannot be examined: {e}"))?
        .file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a pipe"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!(
            "the descriptor sent with put is {what}, not a memfd holding the data"
        ));
    }
    let seals = seals_of(file)?;
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err(
            "the memfd sent with put is not sealed against shrinking: add F_SEAL_SHRINK \
             (fcntl F_ADD_SEALS) before sending it"
                .into(),
        );
    }
    Ok(())
}

/// Removes the socket when the daemon stops.
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Flavor, affine};
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;

    type Exts<'a> = &'a [(i32, &'a [u8])];

    /// A sealable memfd of `room` free bytes, then `data`, sealed against shrinking as a client
    /// sends it.
    fn memfd_with(room: u64, data: &[u8]) -> std::fs::File {
        // SAFETY: memfd_create takes a NUL-terminated name and returns a new descriptor or -1.
        let fd = unsafe {
            libc::memfd_create(
                c"test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: the descriptor was just created and nothing else owns it.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all_at(data, room).unwrap();
        // SAFETY: F_ADD_SEALS on our own descriptor.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) },
            0
        );
        file
    }

    fn put(file: &std::fs::File, data_offset: u64, exts: Exts) -> Result<Image, String> {
        let header = Header::new(Flavor::Nifti1, ByteOrder::native());
        let extensions: Vec<_> = exts
            .iter()
            .map(|(code, content)| super::super::protocol::WireExtension {
                code: *code,
                content: BASE64.encode(content),
            })
            .collect();
        let wire = Wire {
            header: &BASE64.encode(header.as_bytes()),
            affine: affine::IDENTITY,
            extensions: &extensions,
            shape: &[4, 4],
            dtype: "float32",
            data_offset,
            in_place: true,
        };
        image_from_wire("t", &wire, file.try_clone().unwrap().into())
    }

    fn values() -> Vec<u8> {
        (0..16u32).flat_map(|i| (i as f32).to_ne_bytes()).collect()
    }

    #[test]
    fn an_in_place_put_makes_the_memfd_the_served_file_and_a_retry_finds_it_so() {
        let file = memfd_with(PAGE, &values());
        let image = put(&file, PAGE, &[]).unwrap();
        let served = image.served_file().expect("served from the memfd");
        assert_eq!(served.seen.size, PAGE + 64);
        let rendering = Rendering::of(&image).unwrap();
        let mut whole = vec![0; rendering.size() as usize];
        file.read_exact_at(&mut whole, 0).unwrap();
        assert_eq!(whole, *rendering.read_at(0, whole.len()).unwrap());
        assert_eq!(&whole[PAGE as usize..], values());
        // sealed: nobody writes or grows it any more
        assert!(file.write_all_at(b"x", 0).is_err());
        assert!(file.set_len(PAGE * 2).is_err());
        // the same memfd again (a retry under another name): the header is found in place
        assert!(put(&file, PAGE, &[]).unwrap().served_file().is_some());
        // served from it until the image changes
        let catalog = Catalog::new(PathBuf::from("/nowhere"));
        assert_eq!(catalog.insert("t", image).unwrap().served_as, "passthrough");
        catalog
            .edit("t", |img| img.set_field("descrip", "x"))
            .unwrap();
        assert_eq!(catalog.summary("t").unwrap().served_as, "rendered");
    }

    #[test]
    fn an_in_place_put_that_cannot_be_the_served_file_is_refused_with_why() {
        // (free bytes in front, data_offset, bytes after the data, extensions, what is said)
        let cases: [(u64, u64, usize, Exts, &str); 4] = [
            (2048, 2048, 0, &[], "multiple of 4096"),
            (
                PAGE,
                PAGE,
                8,
                &[],
                "holds 4168 bytes, but the served file is 4160",
            ),
            (
                PAGE,
                PAGE,
                0,
                &[(6, b"a comment")],
                "right after them when there are extensions",
            ),
            (0, 0, 0, &[], "the header and extensions take 352 bytes"),
        ];
        for (room, offset, trailing, exts, why) in cases {
            let mut bytes = values();
            bytes.resize(bytes.len() + trailing, 0);
            let file = memfd_with(room, &bytes);
            let err = put(&file, offset, exts).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
