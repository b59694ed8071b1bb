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
use serde_json::{Value, json};

use super::fdpass;
use super::protocol::{Request, field_text};
use crate::catalog::Catalog;
use crate::format::{DataType, Extension, Header};
use crate::image::{Image, VoxelBuffer};

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
fn refuse(stream: &UnixStream, message: &str) {
    let out = json!({"ok": false, "error": message});
    let _ = fdpass::send_with_fds(stream, format!("{out}\n").as_bytes(), &[]);
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
            let response = respond(&line[..end], catalog, &mut line_fds);
            let mut out = serde_json::to_vec(&response).expect("JSON values serialize");
            out.push(b'\n');
            if fdpass::send_with_fds(&stream, &out, &[]).is_err() {
                return;
            }
            if response.get("shutting_down") == Some(&Value::Bool(true))
                && let Some(stop) = shutdown
            {
                stop();
            }
        }
        searched = pending.len();
        if pending.len() > MAX_LINE {
            // The connection closes: what the client still sends of this line goes nowhere.
            refuse(
                &stream,
                &format!("request line too long (over {MAX_LINE} bytes); connection closed"),
            );
            return;
        }
        if fds.len() > MAX_LINE_FDS {
            refuse(
                &stream,
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

fn respond(line: &[u8], catalog: &Catalog, fds: &mut VecDeque<OwnedFd>) -> Value {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handle(request, catalog, fds)
    }));
    match result {
        Ok(Ok(mut value)) => {
            value["ok"] = Value::Bool(true);
            value
        }
        Ok(Err(message)) => json!({"ok": false, "error": message}),
        Err(_) => json!({"ok": false, "error": "internal error while handling the request"}),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("serializable")
}

fn handle(
    request: Request,
    catalog: &Catalog,
    fds: &mut VecDeque<OwnedFd>,
) -> Result<Value, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match request {
        Request::Ping {} => json!({
            "mount": catalog.mount_dir(),
            "pid": std::process::id(),
        }),
        Request::Add { path, name } => {
            if !path.is_absolute() {
                return Err(format!(
                    "{}: the daemon needs an absolute path",
                    path.display()
                ));
            }
            let name = match name {
                Some(n) => n,
                None => crate::catalog::name_from_path(&path).ok_or_else(|| {
                    format!(
                        "{}: cannot take an image name from this path",
                        path.display()
                    )
                })?,
            };
            to_value(catalog.add(&name, &path).map_err(|e| text(&e))?)
        }
        Request::Ls {} => json!({"images": catalog.list()}),
        Request::Show { name } => show(catalog, &name)?,
        Request::Set { name, fields } => {
            let edits: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.clone(), field_text(v)))
                .collect();
            catalog
                .edit(&name, |img| img.set_fields(&edits))
                .map_err(|e| text(&e))?;
            to_value(catalog.summary(&name).map_err(|e| text(&e))?)
        }
        Request::SetAffine { name, affine } => {
            if affine.iter().flatten().any(|x| !x.is_finite()) {
                return Err("the affine must hold finite numbers".into());
            }
            catalog
                .edit(&name, |img| {
                    img.set_affine(affine);
                    Ok(())
                })
                .map_err(|e| text(&e))?;
            to_value(catalog.summary(&name).map_err(|e| text(&e))?)
        }
        Request::Path { name } => json!({"path": catalog.path(&name).map_err(|e| text(&e))?}),
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
                other => return Err(format!("unknown state '{other}': use clean or dirty")),
            }
            .map_err(|e| text(&e))?;
            to_value(catalog.summary(&name).map_err(|e| text(&e))?)
        }
        Request::Rm { name } => {
            catalog.remove(&name).map_err(|e| text(&e))?;
            json!({})
        }
        Request::Save { name, out } => {
            if !out.is_absolute() {
                return Err(format!(
                    "{}: the daemon needs an absolute path",
                    out.display()
                ));
            }
            catalog
                .with_image(&name, |image| crate::render::save_image(image, &out))
                .map_err(|e| text(&e))?
                .map_err(|e| format!("image '{name}': {e}"))?;
            json!({"path": out})
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
        } => {
            let fd = fds
                .pop_front()
                .ok_or("put needs the data's file descriptor sent with the request")?;
            let image = image_from_wire(
                &header,
                affine,
                &extensions,
                &shape,
                &dtype,
                fd,
                data_offset,
            )?;
            let summary = if replace {
                catalog.replace(&name, image)
            } else {
                catalog.insert(&name, image)
            };
            to_value(summary.map_err(|e| text(&e))?)
        }
        Request::Stats {} => {
            let s = &catalog.stats;
            json!({
                "passthrough_opens": s.passthrough_opens.load(Ordering::Relaxed),
                "rendered_opens": s.rendered_opens.load(Ordering::Relaxed),
                "forwarded_reads": s.forwarded_reads.load(Ordering::Relaxed),
                "rendered_reads": s.rendered_reads.load(Ordering::Relaxed),
                "images": catalog.names().len(),
                "kernel_held_versions": catalog.kernel_held_versions(),
            })
        }
        Request::Shutdown {} => json!({"shutting_down": true}),
    })
}

fn show(catalog: &Catalog, name: &str) -> Result<Value, String> {
    let summary = catalog.summary(name).map_err(|e| e.to_string())?;
    let (fields, affine, extensions) = catalog
        .edit(name, |img| {
            // Inside the edit, with the image's lock held: a test shows a panic here leaves the
            // image usable.
            crate::fault::panic_if_asked(|| Some(name.to_string()));
            let exts: Vec<Value> = img
                .extensions()
                .iter()
                .map(|e| json!({"code": e.code, "size": e.disk_size()}))
                .collect();
            Ok((img.header().fields_json(), *img.affine(), exts))
        })
        .map_err(|e| e.to_string())?;
    let mut value = to_value(summary);
    value["header"] = Value::Object(fields);
    value["affine"] = to_value(affine);
    value["extensions"] = Value::Array(extensions);
    Ok(value)
}

fn image_from_wire(
    header: &str,
    affine: crate::format::Affine,
    extensions: &[super::protocol::WireExtension],
    shape: &[u64],
    dtype: &str,
    fd: OwnedFd,
    data_offset: u64,
) -> Result<Image, String> {
    let bytes = BASE64
        .decode(header)
        .map_err(|e| format!("header is not base64: {e}"))?;
    let header = Header::parse(&bytes).map_err(|e| format!("header: {e}"))?;
    let dtype = DataType::from_name(dtype).ok_or_else(|| format!("unknown dtype '{dtype}'"))?;
    if shape.is_empty() || shape.len() > 7 || shape.contains(&0) {
        return Err(format!(
            "shape {shape:?} must have 1 to 7 positive dimensions"
        ));
    }
    let extensions = extensions
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
    // SAFETY: `check_sealed` saw F_SEAL_SHRINK, and a seal can never be removed: the memfd keeps
    // at least the length mapped here for the map's whole life, so no read of it can fault
    // (SIGBUS). The client may still write to it; that changes the voxel values served, never
    // our own memory, as the map is only read through plain byte copies.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map the data: {e}"))?;
    let data = VoxelBuffer::mapped(dtype, shape, map, data_offset)?;
    Image::from_parts(header, affine, extensions, data).map_err(|e| e.to_string())
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
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(format!(
            "the descriptor sent with put is not a memfd that allows sealing ({}): create it \
             with MFD_ALLOW_SEALING and add F_SEAL_SHRINK",
            io::Error::last_os_error()
        ));
    }
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
