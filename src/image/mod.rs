//! The image model: a header, an affine, extensions and voxel data, with the file it came
//! from, and the answer to "does this image still correspond to its original?".
//!
//! Dirty tracking follows nibabel's design note "Keeping track of whether images have been
//! modified since load": handing the data out for writing marks the image dirty (a `&mut`
//! borrow makes that exact); the header, the affine and small extensions are kept as loaded and
//! compared when asked; a large extension handed out for writing counts as changed; the user
//! can override; and a change to the original on disk ends the correspondence for good.

pub mod convert;
pub mod data;
pub mod origin;
mod state;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

pub use convert::Encoding;
pub use data::{DataObj, Element, FileSource, GzSource, VoxelBuffer};
pub use origin::{FileIdentity, Origin};
use state::Tracker;
pub use state::{DirtyState, LARGE_EXTENSION, Reason};

use crate::format::header::FieldValue;
use crate::format::{self, Affine, DataType, Extension, Flavor, FormatError, Header};
use crate::progress::{Progress, Shared, Silent};
use convert::ValueRange;

/// Why an operation on an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Field(#[from] format::header::FieldError),
    #[error(transparent)]
    Conversion(#[from] convert::ConversionError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    DataUnavailable(String),
}

/// A neuroimaging image held in memory.
#[derive(Debug)]
pub struct Image {
    header: Header,
    extensions: Vec<Extension>,
    affine: Affine,
    /// The data type of the image's numbers, the header's (and the data object's).
    dtype: DataType,
    shape: Vec<u64>,
    /// Where the numbers are now.
    data: DataObj,
    /// The data object as loaded from the original: what a clean image is served from, even
    /// after its data were read into memory.
    original: Option<DataObj>,
    /// Whether the affine comes from an SPM `.mat` sidecar, not from the header.
    sidecar_affine: bool,
    origin: Option<Arc<Origin>>,
    /// The file the image was handed over as, laid out as it is served (header, extensions,
    /// data): while the image is unchanged, it is served straight from that file.
    served_file: Option<Arc<FileSource>>,
    /// What changed since load: the one place the image's clean/dirty answer comes from.
    tracker: Tracker,
    changed_at: SystemTime,
    generation: u64,
    /// The value range of a base in an encoding, computed once and reused by every datatype
    /// change of that base.
    base_range: Option<(DataObj, Encoding, ValueRange)>,
    /// The header's `scl_slope` and `scl_inter` as they were for the base, restored when a
    /// change goes back to the base's own type.
    base_scaling: Option<(FieldValue, FieldValue)>,
}

impl Image {
    /// Loads an image's header, extensions and sidecar; the voxel data stay on disk. A
    /// compressed original gets a gzip cache of its own ([`Image::load_with`] shares one).
    pub fn load(path: &Path) -> Result<Image, ImageError> {
        let cache = Arc::new(format::gzindex::GzCache::new(
            format::gzindex::DEFAULT_CACHE_BYTES,
        ));
        Image::load_with(path, &cache)
    }

    /// As [`Image::load`], with decompressed segments of a compressed original kept in `cache`.
    pub fn load_with(
        path: &Path,
        cache: &Arc<format::gzindex::GzCache>,
    ) -> Result<Image, ImageError> {
        let path = std::path::absolute(path).map_err(|e| FormatError::io(path, e))?;
        let loaded = format::io::load(&path)?;
        let map = loaded.file_map.clone();
        let mut seen = Vec::new();
        let stat = |p: &Path| -> Result<(std::path::PathBuf, FileIdentity), FormatError> {
            let meta = std::fs::metadata(p).map_err(|e| FormatError::io(p, e))?;
            Ok((p.to_path_buf(), FileIdentity::of(&meta)))
        };
        seen.push(stat(&map.header)?);
        let image_path = map.image.clone();
        let data = if map.compressed {
            if !map.is_single() {
                seen.push(stat(&map.image)?);
            }
            None
        } else {
            let file = File::open(&map.image).map_err(|e| FormatError::io(&map.image, e))?;
            let meta = file
                .metadata()
                .map_err(|e| FormatError::io(&map.image, e))?;
            let identity = FileIdentity::of(&meta);
            if map.is_single() {
                seen[0].1 = identity;
            } else {
                seen.push((map.image.clone(), identity));
            }
            Some(DataObj::file(
                loaded.dtype,
                Arc::new(FileSource::new(
                    file,
                    map.image.clone(),
                    (loaded.data_offset, loaded.data_len),
                    loaded.header.order(),
                    identity,
                )),
            ))
        };
        if let Some(mat) = map.sidecar().filter(|m| m.exists()) {
            seen.push(stat(&mat)?);
        }
        let origin = Arc::new(Origin::new(map, seen));
        let data = match data {
            Some(data) => data,
            None => DataObj::gzip(
                loaded.dtype,
                Arc::new(GzSource::open(
                    &image_path,
                    (loaded.data_offset, loaded.data_len),
                    loaded.header.order(),
                    origin.clone(),
                    cache.clone(),
                )?),
            ),
        };
        let header = loaded.header.clone();
        let affine = loaded.affine();
        Ok(Image {
            tracker: Tracker::new(&header, &affine, &loaded.extensions),
            extensions: loaded.extensions.clone(),
            shape: loaded.shape.clone(),
            header,
            affine,
            dtype: loaded.dtype,
            original: Some(data.clone()),
            data,
            sidecar_affine: loaded.sidecar_affine.is_some(),
            changed_at: SystemTime::now(),
            origin: Some(origin),
            served_file: None,
            generation: 0,
            base_range: None,
            base_scaling: None,
        })
    }

    /// A new image from parts held in memory; it has no original, so it is never clean.
    pub fn from_parts(
        mut header: Header,
        affine: Affine,
        extensions: Vec<Extension>,
        data: VoxelBuffer,
    ) -> Result<Image, ImageError> {
        header.set_datatype(data.dtype());
        header.set_shape(data.shape())?;
        if header.flavor() != Flavor::Analyze
            && let FieldValue::Floats(slope) = header.get("scl_slope")?
            && !slope[0].is_finite()
        {
            // nibabel's in-memory marker for "no scaling": on disk it writes 1 and 0, and
            // strict readers scale by a NaN slope.
            header.set_slope_inter(Some((1.0, 0.0)));
        }
        if header.flavor() != Flavor::Analyze {
            let code = header.sform_code().max(1);
            header.set_sform(&affine, code);
        }
        Ok(Image {
            tracker: Tracker::new(&header, &affine, &extensions),
            shape: data.shape().to_vec(),
            header,
            extensions,
            affine,
            dtype: data.dtype(),
            data: DataObj::memory(Arc::new(data)),
            original: None,
            sidecar_affine: false,
            origin: None,
            served_file: None,
            changed_at: SystemTime::now(),
            generation: 0,
            base_range: None,
            base_scaling: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    pub fn origin(&self) -> Option<&Arc<Origin>> {
        self.origin.as_ref()
    }

    /// How the stored numbers map to the values a reader sees: the data type and the header's
    /// scaling.
    pub fn encoding(&self) -> Encoding {
        // A slope of 1 with no intercept is no scaling at all, as nibabel reads it.
        Encoding {
            dtype: self.dtype,
            scaling: self.header.slope_inter().filter(|&s| s != (1.0, 0.0)),
        }
    }

    /// The data file of an uncompressed original, open since load.
    pub fn original_data(&self) -> Option<&Arc<FileSource>> {
        self.original.as_ref().and_then(DataObj::file_source)
    }

    /// Records that `file` holds this image byte for byte as it is served now (a handed-over
    /// memfd laid out so), so that it is served from `file` until the image changes.
    pub fn set_served_file(&mut self, file: Arc<FileSource>) {
        self.served_file = Some(file);
    }

    /// The file that holds this image exactly as served, while the image is unchanged since
    /// [`Image::set_served_file`]: every change bumps the generation.
    pub fn served_file(&self) -> Option<&Arc<FileSource>> {
        self.served_file.as_ref().filter(|_| self.generation == 0)
    }

    /// Where the numbers are now (nibabel's `dataobj`).
    pub fn dataobj(&self) -> &DataObj {
        &self.data
    }

    /// Bytes of the arrays this image holds in memory (its numbers now, and its original's
    /// when those are in memory too); 0 for numbers read from a file.
    pub fn memory_bytes(&self) -> u64 {
        let mut arrays = Vec::new();
        self.data.memory_arrays(&mut arrays);
        if let Some(original) = &self.original {
            original.memory_arrays(&mut arrays);
        }
        arrays.iter().map(|a| a.bytes().len() as u64).sum()
    }

    /// Bumped by every change; the mount gives each generation its own file version.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn changed_at(&self) -> SystemTime {
        self.changed_at
    }

    fn touch(&mut self) {
        self.generation += 1;
        self.changed_at = SystemTime::now();
    }

    /// Sets a header field by nibabel's name. `datatype` converts the data (as nibabel does on
    /// save); fields imgfs lays out itself are refused.
    pub fn set_field(&mut self, name: &str, value: &str) -> Result<(), ImageError> {
        self.set_field_with_progress(name, value, &Silent)
    }

    /// [`Image::set_field`], telling `progress` how far a datatype change's pass over the data
    /// has got.
    pub fn set_field_with_progress(
        &mut self,
        name: &str,
        value: &str,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        match name {
            "datatype" => {
                let dtype = DataType::from_name(value).ok_or_else(|| {
                    ImageError::Refused(format!(
                        "unknown datatype '{value}': expected a name such as uint8, int16, \
                         int32, float32, float64, complex64, RGB, or a NIfTI code"
                    ))
                })?;
                return self.set_data_dtype_with_progress(dtype, progress);
            }
            "bitpix" => return Err(refused_field(name, "it follows datatype")),
            "sizeof_hdr" | "magic" | "vox_offset" => {
                return Err(refused_field(
                    name,
                    "imgfs sets it when it lays out the file",
                ));
            }
            _ => {}
        }
        let mut header = self.header.clone();
        header.set_from_str(name, value)?;
        if name == "dim" {
            self.check_reshape(&header)?;
        }
        self.header = header;
        if name == "dim" {
            self.shape = self.header.shape().map_err(ImageError::Refused)?;
        }
        if !self.sidecar_affine {
            self.affine = self.header.best_affine();
        }
        self.touch();
        Ok(())
    }

    /// Sets several fields at once: all or none.
    pub fn set_fields(&mut self, edits: &[(String, String)]) -> Result<(), ImageError> {
        self.set_fields_with_progress(edits, &Silent)
    }

    /// [`Image::set_fields`], telling `progress` how far a datatype change's pass over the
    /// data has got.
    pub fn set_fields_with_progress(
        &mut self,
        edits: &[(String, String)],
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let saved = (
            self.header.clone(),
            self.affine,
            self.dtype,
            self.shape.clone(),
            self.data.clone(),
            self.base_scaling.clone(),
        );
        for (name, value) in edits {
            if let Err(e) = self.set_field_with_progress(name, value, progress) {
                (
                    self.header,
                    self.affine,
                    self.dtype,
                    self.shape,
                    self.data,
                    self.base_scaling,
                ) = saved;
                return Err(e);
            }
        }
        Ok(())
    }

    fn check_reshape(&self, header: &Header) -> Result<(), ImageError> {
        let new = header.shape().map_err(ImageError::Refused)?;
        let count = |s: &[u64]| s.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if count(&new) != count(&self.shape) {
            return Err(ImageError::Refused(format!(
                "dim {new:?} would change the number of voxels of shape {:?}; only reshapes \
                 that keep the voxel count are allowed",
                self.shape
            )));
        }
        Ok(())
    }

    /// nibabel's `set_data_dtype`, applied as nibabel's save would: the new type, with the
    /// scaling nibabel's array writer would choose, goes into the header. As in nibabel, the
    /// data stay as they are (the original's numbers, or the array in memory): the change is a
    /// view of them in the new type, converted by range when read, so it holds no memory, and
    /// every later change starts from the same data, never from this one's rounded numbers.
    /// The value range nibabel's scaling needs takes one pass over the data, once per base.
    pub fn set_data_dtype(&mut self, dtype: DataType) -> Result<(), ImageError> {
        self.set_data_dtype_with_progress(dtype, &Silent)
    }

    /// [`Image::set_data_dtype`], telling `progress` how many bytes of the data the value
    /// range pass has read (the long part, on a large or compressed original).
    pub fn set_data_dtype_with_progress(
        &mut self,
        dtype: DataType,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        if self.dtype == dtype {
            return Ok(());
        }
        let (base, from) = self.base();
        if from.dtype == dtype {
            // Back to the base's own type: served as it is, with its own scaling.
            self.data = base;
            if let Some((slope, inter)) = self.base_scaling.take() {
                self.header.set("scl_slope", &slope)?;
                self.header.set("scl_inter", &inter)?;
            } else {
                self.header.set_slope_inter(from.scaling);
            }
        } else {
            let range = if convert::needs_range(from, dtype) {
                Some(self.value_range(&base, from, progress)?)
            } else {
                None
            };
            let target = convert::target_encoding(from, dtype, range)?;
            if self.data.conversion().is_none() {
                self.base_scaling =
                    Some((self.header.get("scl_slope")?, self.header.get("scl_inter")?));
            }
            self.data = DataObj::converted(base, from, target, range);
            // No scaling is written as nibabel writes it, 1 and 0: a NaN slope is nibabel's
            // in-memory marker, and strict readers scale by it.
            self.header
                .set_slope_inter(Some(target.scaling.unwrap_or((1.0, 0.0))));
        }
        self.dtype = dtype;
        self.header.set_datatype(dtype);
        self.touch();
        Ok(())
    }

    /// The data as they are and how their numbers read: what a datatype change converts from.
    /// A conversion whose scaling was edited since (`scl_slope`, `scl_inter`) is taken as new
    /// data, as it now reads: its converted numbers, read by range, never loaded.
    fn base(&mut self) -> (DataObj, Encoding) {
        if let Some(c) = self.data.conversion() {
            if self.encoding() == c.to {
                return (c.base.clone(), c.from);
            }
            self.base_scaling = None;
        }
        (self.data.clone(), self.encoding())
    }

    /// The finite range of a base's values, in one pass over the stored data (not loading
    /// them); remembered for the next change of the same base. An uncompressed file is split
    /// over two threads; a gzip stream is read in order, which builds its index as it goes.
    fn value_range(
        &mut self,
        base: &DataObj,
        from: Encoding,
        progress: &dyn Progress,
    ) -> Result<ValueRange, ImageError> {
        if let Some((b, e, range)) = &self.base_range
            && b.is(base)
            && *e == from
        {
            return Ok(*range);
        }
        if from.dtype.is_complex() {
            // Refused later by target_encoding; no need to read anything.
            return Ok(ValueRange::default());
        }
        let stored = if let Some(data) = base.in_memory() {
            convert::stored_range(from.dtype, format::ByteOrder::native(), data.bytes())
        } else if base.gzip_source().is_some() {
            let shared = Shared::new(base.len(), progress);
            data_range(base, 0, base.len(), &shared).map_err(|e| self.data_error(e.to_string()))?
        } else {
            let unit = from.dtype.size() as u64;
            let half = (base.len() / unit / 2) * unit;
            let shared = Shared::new(base.len(), progress);
            let shared = &shared;
            let ranges = std::thread::scope(|s| {
                let parts = [(0, half), (half, base.len())]
                    .map(|(a, b)| s.spawn(move || data_range(base, a, b, shared)));
                parts.map(|p| p.join().expect("range thread"))
            });
            let [a, b] = ranges;
            a.and_then(|a| b.map(|b| a.merge(b)))
                .map_err(|e| self.data_error(e.to_string()))?
        };
        let range = stored.scaled(from.scaling);
        self.base_range = Some((base.clone(), from, range));
        Ok(range)
    }

    /// A failed read of the data: a changed original is recorded by the data object itself
    /// (and a broken gzip stream as unreadable), so only the error is made here.
    fn data_error(&self, why: String) -> ImageError {
        if let Some(origin) = &self.origin
            && origin.unreadable().is_none()
            && why.contains("since load")
        {
            origin.mark_lost(why.clone());
        }
        ImageError::DataUnavailable(why)
    }

    /// The numbers in memory, read on first use; they become the image's data, shared with
    /// the versions being served. Reading never dirties the image. After a datatype change
    /// the converted array is made and kept with the conversion, which later changes still
    /// convert from.
    pub fn data(&mut self) -> Result<&VoxelBuffer, ImageError> {
        if self.data.memory_view().is_none() {
            if self.data.conversion().is_none() {
                self.check_original()?;
            }
            let data = self
                .data
                .to_memory(&self.shape)
                .map_err(|e| self.data_error(e.to_string()))?;
            if self.data.conversion().is_none() {
                self.data = DataObj::memory(data);
            }
        }
        self.data
            .memory_view()
            .ok_or_else(|| ImageError::DataUnavailable("the data could not be loaded".into()))
    }

    /// Refuses to load data from an original that changed or turned out broken.
    fn check_original(&self) -> Result<(), ImageError> {
        if let Some(origin) = &self.origin {
            if let Some(why) = origin.unreadable() {
                return Err(ImageError::DataUnavailable(why.to_string()));
            }
            if let Some(why) = origin.check() {
                return Err(ImageError::DataUnavailable(format!(
                    "{why}; its data were never loaded"
                )));
            }
        }
        Ok(())
    }

    /// The voxel array for writing: the image is dirty from now on. If a served version still
    /// shares the array, it is copied first so that version's readers see no change.
    /// Written data are the data as they are from now on: a later datatype change converts
    /// from them.
    pub fn data_mut(&mut self) -> Result<&mut VoxelBuffer, ImageError> {
        self.data()?;
        if self.data.conversion().is_some() {
            // Made by data() just now: shared, not converted again.
            let converted = self
                .data
                .to_memory(&self.shape)
                .map_err(|e| self.data_error(e.to_string()))?;
            self.data = DataObj::memory(converted);
            self.base_scaling = None;
        }
        self.tracker.data_written();
        self.touch();
        self.data
            .make_mut()
            .ok_or_else(|| ImageError::DataUnavailable("the data are not in memory".into()))
    }

    /// The values a reader sees (nibabel's `get_fdata()`), in file order.
    pub fn fdata(&mut self) -> Result<Vec<f64>, ImageError> {
        let from = self.encoding();
        let mut out = Vec::new();
        let mut values = Vec::new();
        let data = self.data.clone();
        read_chunks(&data, 0, data.len(), |bytes| {
            convert::decode(from.dtype, data.order(), bytes, &mut values);
            convert::rescale(
                &mut values,
                from,
                Encoding {
                    dtype: DataType::Float64,
                    scaling: None,
                },
            );
            out.extend_from_slice(&values);
        })
        .map_err(|e| self.data_error(e.to_string()))?;
        Ok(out)
    }

    /// Sets the affine, as nibabel's `update_header` writes it on save: into the sform
    /// (keeping its code, or "aligned" if there was none), and the qform if it is in use.
    pub fn set_affine(&mut self, affine: Affine) {
        if self.header.flavor() != Flavor::Analyze {
            let scode = self.header.sform_code();
            self.header
                .set_sform(&affine, if scode > 0 { scode } else { 2 });
            let qcode = self.header.qform_code();
            if qcode > 0 {
                self.header.set_qform(&affine, qcode);
            }
        }
        self.affine = affine;
        self.touch();
    }

    /// An extension for writing. A large one counts as changed from now on.
    pub fn extension_mut(&mut self, index: usize) -> Option<&mut Extension> {
        let large = self.extensions.get(index)?.content.len() > LARGE_EXTENSION;
        if large {
            self.tracker.large_extension_out(index);
        }
        self.touch();
        self.extensions.get_mut(index)
    }

    pub fn push_extension(&mut self, extension: Extension) {
        self.extensions.push(extension);
        self.touch();
    }

    pub fn remove_extension(&mut self, index: usize) -> Option<Extension> {
        if index >= self.extensions.len() {
            return None;
        }
        self.touch();
        Some(self.extensions.remove(index))
    }

    /// The user's override: the image is to be taken as its original from now on.
    pub fn mark_clean(&mut self) {
        self.tracker = Tracker::new(&self.header, &self.affine, &self.extensions);
        self.touch();
    }

    /// The user's override: the image is to be taken as changed until marked clean.
    pub fn mark_dirty(&mut self) {
        self.tracker.mark_dirty();
        self.touch();
    }

    /// Clean, or dirty with every reason. Checks the original on disk.
    pub fn state(&self) -> DirtyState {
        let mut reasons = Vec::new();
        match &self.origin {
            None => reasons.push(Reason::NoOriginal),
            Some(origin) => {
                if let Some(why) = origin.check() {
                    reasons.push(Reason::OriginalChanged(why.to_string()));
                }
                if let Some(why) = origin.unreadable() {
                    reasons.push(Reason::OriginalUnreadable(why.to_string()));
                }
            }
        }
        reasons.extend(
            self.tracker
                .reasons(&self.header, &self.affine, &self.extensions),
        );
        DirtyState { reasons }
    }

    /// The header to write in `flavor`: the image's header with its affine and, for Analyze
    /// sources, the sidecar affine carried into the sform.
    pub fn header_as(&self, flavor: Flavor) -> Header {
        let mut header = self.header.convert_to(flavor);
        if self.header.flavor() == Flavor::Analyze && flavor != Flavor::Analyze {
            header.set_sform(&self.affine, 2);
        }
        if flavor != Flavor::Analyze
            && let Some(scaling) = header.slope_inter()
        {
            // A valid slope with a NaN or infinite intercept reads here (and in the NIfTI C
            // library) as intercept 0, but nibabel refuses such a file: write the scaling as it
            // is read. Finite scale factors are written back unchanged.
            header.set_slope_inter(Some(scaling));
        }
        header
    }
}

/// The stored range of data bytes `[a, b)`, read in 4 MiB chunks.
fn data_range(data: &DataObj, a: u64, b: u64, done: &Shared) -> std::io::Result<ValueRange> {
    let mut range = ValueRange::default();
    read_chunks(data, a, b, |bytes| {
        range = range.merge(convert::stored_range(data.dtype(), data.order(), bytes));
        done.add(bytes.len() as u64);
    })?;
    Ok(range)
}

/// Visits data bytes `[a, b)` in 4 MiB chunks of whole elements, in the data object's byte
/// order, through one reused buffer.
fn read_chunks(
    data: &DataObj,
    a: u64,
    b: u64,
    mut visit: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let unit = data.dtype().size();
    let chunk = ((4 << 20) / unit * unit) as u64;
    let mut buf = vec![0; chunk.min(b - a) as usize];
    let mut at = a;
    while at < b {
        let n = chunk.min(b - at) as usize;
        data.read_at(&mut buf[..n], at)?;
        visit(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

fn refused_field(name: &str, why: &str) -> ImageError {
    ImageError::Refused(format!("header field '{name}' cannot be set: {why}"))
}
