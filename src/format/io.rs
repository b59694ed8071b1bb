//! Files on disk: which files make up an image (its file map), reading the header, extensions
//! and sidecar without the voxel data, reading the data when asked, and writing images.
//!
//! Every size read from a file is checked against the file's real size before anything is
//! allocated from it, and every error names the file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use tempfile::NamedTempFile;

use super::affine::{self, Affine};
use super::dtype::DataType;
use super::error::FormatError;
use super::header::{Flavor, Header};
use super::spm_mat;

/// The files behind one image, as nibabel's file map names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMap {
    pub header: PathBuf,
    pub image: PathBuf,
    pub compressed: bool,
}

const SUFFIXES: &str = ".nii, .nii.gz, .hdr, .img, .hdr.gz or .img.gz";

impl FileMap {
    /// Works out the files from any one of their names.
    pub fn from_path(path: &Path) -> Result<FileMap, FormatError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FormatError::unsupported(path, "file name is not valid UTF-8"))?;
        let (stem_len, compressed) = if let Some(base) = name.strip_suffix(".gz") {
            (base.len(), true)
        } else {
            (name.len(), false)
        };
        let base = &name[..stem_len];
        let with = |ext: &str| {
            let gz = if compressed { ".gz" } else { "" };
            let stem = &base[..base.len() - 4];
            path.with_file_name(format!("{stem}{ext}{gz}"))
        };
        let map = if base.ends_with(".nii") && base.len() > 4 {
            FileMap {
                header: path.to_path_buf(),
                image: path.to_path_buf(),
                compressed,
            }
        } else if (base.ends_with(".hdr") || base.ends_with(".img")) && base.len() > 4 {
            FileMap {
                header: with(".hdr"),
                image: with(".img"),
                compressed,
            }
        } else {
            return Err(FormatError::unsupported(
                path,
                format!("not an image file name: expected {SUFFIXES}"),
            ));
        };
        Ok(map)
    }

    pub fn is_single(&self) -> bool {
        self.header == self.image
    }

    pub fn kind_name(&self) -> &'static str {
        if self.is_single() { "single" } else { "pair" }
    }

    /// SPM's `.mat` sidecar beside a pair (`.mat.gz` beside a compressed one, as nibabel
    /// writes it).
    pub fn sidecar(&self) -> Option<PathBuf> {
        if self.is_single() {
            return None;
        }
        let name = self.header.file_name()?.to_str()?;
        let stem = name.trim_end_matches(".gz").trim_end_matches(".hdr");
        let gz = if self.compressed { ".gz" } else { "" };
        Some(self.header.with_file_name(format!("{stem}.mat{gz}")))
    }
}

/// A NIfTI extension: its code and its content, padding included, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub code: i32,
    pub content: Vec<u8>,
}

impl Extension {
    /// The bytes this extension takes on disk (`esize`): a multiple of 16.
    pub fn disk_size(&self) -> usize {
        (self.content.len() + 8).div_ceil(16) * 16
    }
}

/// An image file as loaded: everything but the voxel data, which stays on disk until asked for.
#[derive(Clone, Debug)]
pub struct LoadedFile {
    pub file_map: FileMap,
    pub header: Header,
    pub extensions: Vec<Extension>,
    pub sidecar_affine: Option<Affine>,
    /// Where the data start in the image file (in the decompressed stream for `.gz`).
    pub data_offset: u64,
    pub data_len: u64,
    pub dtype: DataType,
    pub shape: Vec<u64>,
}

fn open(path: &Path) -> Result<File, FormatError> {
    File::open(path).map_err(|e| FormatError::io(path, e))
}

fn reader(path: &Path, compressed: bool) -> Result<Box<dyn Read>, FormatError> {
    let file = open(path)?;
    Ok(if compressed {
        Box::new(MultiGzDecoder::new(io::BufReader::new(file)))
    } else {
        Box::new(file)
    })
}

/// Reads up to `limit` bytes, stopping early only at the end of the stream.
fn read_up_to(r: &mut dyn Read, limit: u64, path: &Path) -> Result<Vec<u8>, FormatError> {
    let mut buf = Vec::new();
    r.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| stream_error(path, e))?;
    Ok(buf)
}

fn stream_error(path: &Path, e: io::Error) -> FormatError {
    match e.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
            FormatError::invalid(path, format!("gzip stream is corrupt: {e}"))
        }
        io::ErrorKind::UnexpectedEof => {
            FormatError::invalid(path, format!("gzip stream is truncated: {e}"))
        }
        _ => FormatError::io(path, e),
    }
}

/// Loads an image's header, extensions and sidecar; the voxel data are not read.
pub fn load(path: &Path) -> Result<LoadedFile, FormatError> {
    let file_map = FileMap::from_path(path)?;
    let hpath = file_map.header.clone();
    let mut r = reader(&hpath, file_map.compressed)?;
    let start = read_up_to(&mut *r, 540, &hpath)?;
    let header = Header::parse(&start).map_err(|e| FormatError::invalid(&hpath, e.to_string()))?;
    let hlen = header.flavor().header_len();
    let single = file_map.is_single();
    if header.flavor() == Flavor::Analyze && single {
        return Err(FormatError::invalid(
            &hpath,
            "an Analyze header (no NIfTI magic) cannot be a single .nii file",
        ));
    }
    let dtype = header
        .datatype()
        .map_err(|e| FormatError::unsupported(&hpath, e))?;
    let shape = header
        .shape()
        .map_err(|e| FormatError::invalid(&hpath, e))?;
    let data_len = header
        .data_len()
        .map_err(|e| FormatError::invalid(&hpath, e))?;
    let raw_offset = header.vox_offset_raw();
    if !raw_offset.is_finite() || raw_offset < 0.0 || raw_offset.fract() != 0.0 {
        return Err(FormatError::invalid(
            &hpath,
            format!("vox_offset {raw_offset} is not a non-negative whole number of bytes"),
        ));
    }
    if raw_offset >= MAX_OFFSET {
        return Err(FormatError::invalid(
            &hpath,
            format!("vox_offset {raw_offset} is beyond the end of any file"),
        ));
    }
    let data_offset = raw_offset as u64;
    if single && data_offset < header.flavor().min_single_offset() {
        return Err(FormatError::invalid(
            &hpath,
            format!(
                "vox_offset {data_offset} is inside the header: a single {} file needs at least {}",
                header.flavor().name(),
                header.flavor().min_single_offset()
            ),
        ));
    }

    // Extensions: after the header up to the data (single file) or to the end (pair), read
    // one at a time so that nothing is sized by a field before the file shows it holds it.
    let ext_end = if single { data_offset } else { u64::MAX };
    let mut rest = io::Cursor::new(start[hlen.min(start.len())..].to_vec()).chain(r);
    let mut at = hlen as u64;
    let extensions = if header.flavor() == Flavor::Analyze {
        Vec::new()
    } else {
        read_extensions(&mut rest, &mut at, ext_end, &header, &hpath)?
    };
    if single && file_map.compressed {
        // The padding before the data is skipped by streaming, never held: this also shows
        // that the stream reaches vox_offset.
        skip_to(&mut rest, &mut at, data_offset, &hpath)?;
    } else if !single && file_map.compressed {
        let ipath = &file_map.image;
        let mut image = reader(ipath, true)?;
        skip_to(&mut *image, &mut 0, data_offset, ipath)?;
    }
    if file_map.compressed {
        check_deflate_bound(&file_map.image, data_offset, data_len)?;
        check_gzip_length(&file_map.image, data_offset, data_len)?;
    }

    let sidecar_affine = match file_map.sidecar() {
        Some(mat) if header.flavor() == Flavor::Analyze && mat.exists() => {
            let mut bytes = Vec::new();
            reader(&mat, file_map.compressed)?
                .take(1 << 20)
                .read_to_end(&mut bytes)
                .map_err(|e| stream_error(&mat, e))?;
            spm_mat::read_sidecar_affine(&bytes).map_err(|e| FormatError::invalid(&mat, e))?
        }
        _ => None,
    };

    let loaded = LoadedFile {
        file_map,
        header,
        extensions,
        sidecar_affine,
        data_offset,
        data_len,
        dtype,
        shape,
    };
    if !loaded.file_map.compressed {
        loaded.check_image_size()?;
    }
    Ok(loaded)
}

/// Deflate codes at most 258 bytes of output in about two bits of input, so no gzip stream
/// inflates to more than this many times its own size.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Refuses a compressed image whose header asks for more data than its stream could possibly
/// inflate to: such a size would otherwise be served as the file's size until a read fails.
/// The stream's true length is known only after a whole pass, which `load` does not make.
fn check_deflate_bound(image: &Path, data_offset: u64, data_len: u64) -> Result<(), FormatError> {
    let compressed = std::fs::metadata(image)
        .map_err(|e| FormatError::io(image, e))?
        .len();
    let most = compressed.saturating_mul(MAX_DEFLATE_RATIO);
    match data_offset.checked_add(data_len) {
        Some(end) if end <= most => Ok(()),
        _ => Err(FormatError::invalid(
            image,
            format!(
                "the header asks for {data_len} bytes of data from byte {data_offset}, but a \
                 gzip stream of {compressed} bytes inflates to at most {most}"
            ),
        )),
    }
}

/// Checks that a gzip stream holds the data its header asks for, without a pass over it in
/// the common case: a single-member stream (what nibabel and gzip write) ends with its length
/// modulo 2^32. Only when that disagrees with the header (a cut stream, whose last bytes are
/// not a trailer; several members, as bgzip writes; a wrong header) does `add` pay for one
/// pass, streamed, so that a cut download is refused at once instead of at the first read.
fn check_gzip_length(image: &Path, data_offset: u64, data_len: u64) -> Result<(), FormatError> {
    use std::io::{Seek, SeekFrom};
    let Some(end) = data_offset.checked_add(data_len) else {
        return Err(FormatError::invalid(
            image,
            "vox_offset plus the data size overflows",
        ));
    };
    let mut file = open(image)?;
    let mut trailer = [0u8; 4];
    // 18 bytes: the smallest gzip member (10-byte header, empty deflate block, 8-byte trailer).
    let trailer_read = file.metadata().is_ok_and(|m| m.len() >= 18)
        && file.seek(SeekFrom::End(-4)).is_ok()
        && file.read_exact(&mut trailer).is_ok();
    if trailer_read && u32::from_le_bytes(trailer) == end as u32 {
        return Ok(());
    }
    let mut stream = reader(image, true)?;
    let mut counted = CountingSink(0);
    let copied = io::copy(&mut (&mut stream).take(end), &mut counted);
    let held = counted.0;
    let data_byte = held.saturating_sub(data_offset);
    match copied {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(FormatError::invalid(
                image,
                format!("gzip stream ends at byte {data_byte} of the data ({e})"),
            ));
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
            ) =>
        {
            return Err(FormatError::invalid(
                image,
                format!("gzip stream is corrupt after byte {data_byte} of the data: {e}"),
            ));
        }
        Err(e) => return Err(FormatError::io(image, e)),
        Ok(_) => {}
    }
    if held < end {
        return Err(FormatError::invalid(
            image,
            format!(
                "gzip stream ends at byte {} of the data: the header asks for {data_len} bytes \
                 from byte {data_offset}",
                held.saturating_sub(data_offset)
            ),
        ));
    }
    Ok(())
}

/// Counts the bytes written to it and keeps none.
struct CountingSink(u64);

impl io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `vox_offset` at or past this (2^63) cannot be a position in any file.
const MAX_OFFSET: f64 = 9_223_372_036_854_775_808.0;

/// Reads the extension flag and the extensions from `r`, which is at byte `*at` of the header
/// file, up to `end` (the data, in a single file) or the end of the stream.
fn read_extensions(
    r: &mut dyn Read,
    at: &mut u64,
    end: u64,
    header: &Header,
    path: &Path,
) -> Result<Vec<Extension>, FormatError> {
    let area_start = *at;
    let take = |r: &mut dyn Read, at: &mut u64, n: u64| -> Result<Vec<u8>, FormatError> {
        let bytes = read_up_to(r, n.min(end.saturating_sub(*at)), path)?;
        *at += bytes.len() as u64;
        Ok(bytes)
    };
    let flag = take(r, at, 4)?;
    if flag.len() < 4 || flag[0] == 0 {
        return Ok(Vec::new());
    }
    let big = header.order() == super::header::ByteOrder::Big;
    let int = |b: &[u8]| {
        let raw: [u8; 4] = b.try_into().expect("four bytes");
        if big {
            i32::from_be_bytes(raw)
        } else {
            i32::from_le_bytes(raw)
        }
    };
    let mut exts = Vec::new();
    loop {
        let here = *at;
        let head = take(r, at, 8)?;
        if head.len() < 8 {
            break;
        }
        let esize = int(&head[..4]);
        let ecode = int(&head[4..]);
        let index = exts.len();
        if esize == 0 && ecode == 0 {
            break; // zero padding before the data, not an extension
        }
        if esize < 16 || esize % 16 != 0 {
            return Err(FormatError::invalid(
                path,
                format!(
                    "extension {index} has esize {esize}; it must be a positive multiple of 16"
                ),
            ));
        }
        let past = |what: String| {
            FormatError::invalid(
                path,
                format!("extension {index} (esize {esize} at byte {here}) runs past {what}"),
            )
        };
        let ext_end = here + esize as u64;
        if ext_end > end {
            return Err(past(format!(
                "the end of the extension area ({} bytes, up to vox_offset {end})",
                end - area_start
            )));
        }
        let content = take(r, at, esize as u64 - 8)?;
        if *at < ext_end {
            return Err(past(format!("the end of the file (byte {at})")));
        }
        exts.push(Extension {
            code: ecode,
            content,
        });
    }
    Ok(exts)
}

/// Reads and drops bytes until `r` is at byte `to`; an error names the byte the stream ended.
fn skip_to(r: &mut dyn Read, at: &mut u64, to: u64, path: &Path) -> Result<(), FormatError> {
    let want = to.saturating_sub(*at);
    let skipped =
        io::copy(&mut r.take(want), &mut io::sink()).map_err(|e| stream_error(path, e))?;
    *at += skipped;
    if skipped < want {
        return Err(FormatError::invalid(
            path,
            format!("vox_offset {to} is past the end of the gzip stream, which ends at byte {at}"),
        ));
    }
    Ok(())
}

impl LoadedFile {
    /// nibabel's `img.affine`: the `.mat` sidecar of an Analyze image if there is one,
    /// otherwise the header's best affine.
    pub fn affine(&self) -> Affine {
        self.sidecar_affine
            .unwrap_or_else(|| self.header.best_affine())
    }

    fn check_image_size(&self) -> Result<(), FormatError> {
        let path = &self.file_map.image;
        let size = fs::metadata(path)
            .map_err(|e| FormatError::io(path, e))?
            .len();
        let needed = self
            .data_offset
            .checked_add(self.data_len)
            .ok_or_else(|| FormatError::invalid(path, "vox_offset plus the data size overflows"))?;
        if size < needed {
            return Err(FormatError::invalid(
                path,
                format!(
                    "file is too short for its data: {} of {} needs {} bytes from offset {}, \
                     but the file has {size} bytes (truncated?)",
                    shape_text(&self.shape),
                    self.dtype,
                    self.data_len,
                    self.data_offset
                ),
            ));
        }
        Ok(())
    }

    /// Reads the voxel data, in the file's byte order.
    pub fn read_data(&self) -> Result<Vec<u8>, FormatError> {
        let path = &self.file_map.image;
        if self.file_map.compressed {
            // Grows with what the stream really holds, never sized by the header alone.
            let mut data = Vec::new();
            self.decompress_data(|bytes| data.extend_from_slice(bytes))?;
            return Ok(data);
        }
        self.check_image_size()?;
        let mut file = open(path)?;
        file.seek(SeekFrom::Start(self.data_offset))
            .map_err(|e| FormatError::io(path, e))?;
        let data = read_up_to(&mut file, self.data_len, path)?;
        if (data.len() as u64) < self.data_len {
            return Err(FormatError::invalid(
                path,
                "file is too short for its data: it shrank while being read",
            ));
        }
        Ok(data)
    }

    /// Decompresses the data of a `.gz` original, handing them to `visit` piece by piece. The
    /// stream is read to its end, for its checksum: a corrupt stream can inflate without an
    /// error to wrong bytes, which only the checksum shows. A stream that ends or breaks early
    /// is an error that says at which byte of the data.
    fn decompress_data(&self, mut visit: impl FnMut(&[u8])) -> Result<(), FormatError> {
        let path = &self.file_map.image;
        let mut r = reader(path, true)?;
        skip_to(&mut *r, &mut 0, self.data_offset, path)?;
        let mut buf = vec![0; 1 << 16];
        let mut held = 0u64;
        loop {
            match r.read(&mut buf) {
                Ok(0) if held < self.data_len => return Err(self.stream_ends(held)),
                Ok(0) => return Ok(()),
                Ok(n) => {
                    let wanted = (self.data_len - held.min(self.data_len)).min(n as u64);
                    visit(&buf[..wanted as usize]);
                    held += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && held < self.data_len => {
                    return Err(self.stream_ends(held));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidInput
                            | io::ErrorKind::InvalidData
                            | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    let at = if held < self.data_len {
                        format!("at byte {held} of the data")
                    } else {
                        "after the data".to_string()
                    };
                    return Err(FormatError::invalid(
                        path,
                        format!("gzip stream is corrupt {at}: {e}"),
                    ));
                }
                Err(e) => return Err(FormatError::io(path, e)),
            }
        }
    }

    fn stream_ends(&self, held: u64) -> FormatError {
        FormatError::invalid(
            &self.file_map.image,
            format!(
                "gzip stream ends at byte {held} of the data: {} of {} needs {} bytes \
                 (truncated?)",
                shape_text(&self.shape),
                self.dtype,
                self.data_len
            ),
        )
    }

    /// Checks that the data are all there, decompressing a `.gz` stream to its end.
    pub fn check_data(&self) -> Result<(), FormatError> {
        if !self.file_map.compressed {
            return self.check_image_size();
        }
        self.decompress_data(|_| ())
    }
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    dims.join("x")
}

/// The most zero padding before the data that a laid-out file keeps from its original's
/// `vox_offset`.
const MAX_KEPT_PADDING: u64 = 64 * 1024;

/// The bytes before the data of a single-file image: the header with its single-file magic and
/// `vox_offset`, the extension flag, the extensions and zero padding.
pub fn single_file_prefix(header: &Header, extensions: &[Extension]) -> Vec<u8> {
    let mut header = header.clone();
    let flavor = header.flavor();
    let needed =
        flavor.min_single_offset() + extensions.iter().map(|e| e.disk_size() as u64).sum::<u64>();
    let kept = header.vox_offset_raw();
    // A larger padding than this is not kept: it would be built here, in memory.
    let keepable = (needed + MAX_KEPT_PADDING) as f64;
    let offset = if header.is_single_file()
        && kept.fract() == 0.0
        && kept >= needed as f64
        && kept <= keepable
    {
        kept as u64
    } else {
        needed.div_ceil(16) * 16
    };
    header.set_single_file(true);
    header.set_vox_offset(offset);
    let mut out = Vec::with_capacity(offset as usize);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&extension_block(&header, extensions));
    out.resize(offset as usize, 0);
    out
}

/// The extension flag and the extensions, in the header's byte order.
fn extension_block(header: &Header, extensions: &[Extension]) -> Vec<u8> {
    let mut out = vec![u8::from(!extensions.is_empty()), 0, 0, 0];
    let big = header.order() == super::header::ByteOrder::Big;
    for ext in extensions {
        let esize = ext.disk_size() as i32;
        let (a, b) = if big {
            (esize.to_be_bytes(), ext.code.to_be_bytes())
        } else {
            (esize.to_le_bytes(), ext.code.to_le_bytes())
        };
        out.extend_from_slice(&a);
        out.extend_from_slice(&b);
        out.extend_from_slice(&ext.content);
        out.resize(out.len() + esize as usize - 8 - ext.content.len(), 0);
    }
    out
}

/// What [`save`] writes.
pub struct ImageToSave<'a> {
    /// The header in the layout to write; its magic and `vox_offset` are set to fit the files.
    pub header: &'a Header,
    pub extensions: &'a [Extension],
    /// For Analyze: written as an SPM `.mat` sidecar when the header alone cannot say it.
    pub affine: Option<&'a Affine>,
    /// Writes the voxel data, in the header's byte order.
    pub write_data: &'a mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
}

/// Writes an image to the files its name calls for. Each file is written to a temporary file
/// created exclusively under a random name in the target directory, then renamed into place,
/// so a failed save leaves no half-written image and a link planted in a shared directory is
/// never written through: a symbolic link at the target name is replaced, not followed.
pub fn save(path: &Path, image: ImageToSave<'_>) -> Result<(), FormatError> {
    let map = FileMap::from_path(path)?;
    let mut header = image.header.clone();
    let flavor = header.flavor();
    if map.is_single() && flavor == Flavor::Analyze {
        return Err(FormatError::unsupported(
            path,
            "an Analyze image cannot be written as a single .nii file; convert it to NIfTI first",
        ));
    }
    let mut staged: Vec<(NamedTempFile, PathBuf)> = Vec::new();
    let result = (|| {
        if map.is_single() {
            let prefix = single_file_prefix(&header, image.extensions);
            stage(&map.image, map.compressed, &mut staged, |w| {
                w.write_all(&prefix)?;
                (image.write_data)(w)
            })?;
        } else {
            let offset = if header.is_single_file() || header.vox_offset_raw().fract() != 0.0 {
                0
            } else {
                header.vox_offset_raw().max(0.0) as u64
            };
            header.set_single_file(false);
            header.set_vox_offset(offset);
            let ext_block = if flavor == Flavor::Analyze || image.extensions.is_empty() {
                Vec::new()
            } else {
                extension_block(&header, image.extensions)
            };
            stage(&map.header, map.compressed, &mut staged, |w| {
                w.write_all(header.as_bytes())?;
                w.write_all(&ext_block)
            })?;
            stage(&map.image, map.compressed, &mut staged, |w| {
                io::copy(&mut io::repeat(0).take(offset), w)?;
                (image.write_data)(w)
            })?;
            if flavor == Flavor::Analyze
                && let (Some(a), Some(mat)) = (image.affine, map.sidecar())
                && affine::max_abs_diff(a, &header.best_affine()) > 1e-6
            {
                let bytes = spm_mat::write_sidecar(a);
                stage(&mat, map.compressed, &mut staged, |w| w.write_all(&bytes))?;
            }
        }
        Ok(())
    })();
    // On an error the staged files are dropped, which removes them.
    result?;
    for (tmp, dest) in staged {
        tmp.persist(&dest)
            .map_err(|e| FormatError::io(&dest, e.error))?;
    }
    Ok(())
}

fn stage(
    dest: &Path,
    compressed: bool,
    staged: &mut Vec<(NamedTempFile, PathBuf)>,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), FormatError> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let err = |e| FormatError::io(dest, e);
    // O_EXCL under a random name: nothing planted in a shared directory can be opened in its
    // place. Mode 0666 less the umask, as for any file the user creates.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".imgfs-tmp")
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(err)?;
    let file = tmp.as_file().try_clone().map_err(err)?;
    staged.push((tmp, dest.to_path_buf()));
    let mut buffered = BufWriter::with_capacity(1 << 20, file);
    if compressed {
        let mut gz = GzEncoder::new(&mut buffered, Compression::new(1));
        body(&mut gz).map_err(err)?;
        gz.finish().map_err(err)?;
    } else {
        body(&mut buffered).map_err(err)?;
    }
    let file = buffered.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_data().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ByteOrder;

    #[test]
    fn a_huge_vox_offset_is_not_kept_as_padding_in_memory() {
        let mut header = Header::new(Flavor::Nifti1, ByteOrder::Little);
        header.set_single_file(true);
        header.set_vox_offset(1 << 31);
        assert_eq!(single_file_prefix(&header, &[]).len(), 352);
        header.set_vox_offset(4096);
        let prefix = single_file_prefix(&header, &[]);
        assert_eq!(prefix.len(), 4096, "a modest padding is kept");
        assert_eq!(Header::parse(&prefix).unwrap().vox_offset_raw(), 4096.0);
    }
}
