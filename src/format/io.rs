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

    // Extensions: after the header up to the data (single file) or to the end (pair).
    let ext_limit = if single {
        data_offset.saturating_sub(hlen as u64)
    } else {
        u64::MAX
    };
    let mut rest = start[hlen..].to_vec();
    let more = read_up_to(&mut *r, ext_limit.saturating_sub(rest.len() as u64), &hpath)?;
    rest.extend_from_slice(&more);
    if single {
        rest.truncate(ext_limit as usize);
    }
    let extensions = if header.flavor() == Flavor::Analyze {
        Vec::new()
    } else {
        parse_extensions(&rest, &header, &hpath)?
    };

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

fn parse_extensions(
    bytes: &[u8],
    header: &Header,
    path: &Path,
) -> Result<Vec<Extension>, FormatError> {
    if bytes.len() < 4 || bytes[0] == 0 {
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
    let mut at = 4;
    while at + 8 <= bytes.len() {
        let esize = int(&bytes[at..at + 4]);
        let ecode = int(&bytes[at + 4..at + 8]);
        let index = exts.len();
        if esize == 0 && bytes[at..].iter().all(|&b| b == 0) {
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
        let end = at as u64 + esize as u64;
        if end > bytes.len() as u64 {
            return Err(FormatError::invalid(
                path,
                format!(
                    "extension {index} (esize {esize} at byte {}) runs past the end of the \
                     extension area ({} bytes)",
                    at + 348,
                    bytes.len() + 348 - 4
                ),
            ));
        }
        exts.push(Extension {
            code: ecode,
            content: bytes[at + 8..end as usize].to_vec(),
        });
        at = end as usize;
    }
    Ok(exts)
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
            let mut r = reader(path, true)?;
            io::copy(&mut (&mut *r).take(self.data_offset), &mut io::sink())
                .map_err(|e| stream_error(path, e))?;
            let data = read_up_to(&mut *r, self.data_len, path)?;
            if (data.len() as u64) < self.data_len {
                return Err(FormatError::invalid(
                    path,
                    format!(
                        "file is too short for its data (truncated): {} of {} needs {} bytes, \
                         the stream holds {}",
                        shape_text(&self.shape),
                        self.dtype,
                        self.data_len,
                        data.len()
                    ),
                ));
            }
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

    /// Checks that the data are all there, decompressing a `.gz` stream to its end.
    pub fn check_data(&self) -> Result<(), FormatError> {
        if !self.file_map.compressed {
            return self.check_image_size();
        }
        let path = &self.file_map.image;
        let mut r = reader(path, true)?;
        let total = io::copy(&mut r, &mut io::sink()).map_err(|e| stream_error(path, e))?;
        if total < self.data_offset + self.data_len {
            return Err(FormatError::invalid(
                path,
                format!(
                    "file is too short for its data (truncated): needs {} bytes, the stream \
                     holds {total}",
                    self.data_offset + self.data_len
                ),
            ));
        }
        Ok(())
    }
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    dims.join("x")
}

/// The bytes before the data of a single-file image: the header with its single-file magic and
/// `vox_offset`, the extension flag, the extensions and zero padding.
pub fn single_file_prefix(header: &Header, extensions: &[Extension]) -> Vec<u8> {
    let mut header = header.clone();
    let flavor = header.flavor();
    let needed =
        flavor.min_single_offset() + extensions.iter().map(|e| e.disk_size() as u64).sum::<u64>();
    let kept = header.vox_offset_raw();
    let offset = if header.is_single_file() && kept.fract() == 0.0 && kept >= needed as f64 {
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
                w.write_all(&vec![0; offset as usize])?;
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
