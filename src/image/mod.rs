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

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

pub use convert::Encoding;
pub use data::{Base, Element, FileSource, Store, VoxelBuffer};
pub use origin::{FileIdentity, Origin};
pub use state::{DirtyState, Reason};

use crate::format::header::FieldValue;
use crate::format::{self, Affine, DataType, Extension, Flavor, FormatError, Header};
use convert::ValueRange;

/// Extensions larger than this are not compared byte for byte: once handed out for writing
/// they count as changed, as the design note proposes.
pub const LARGE_EXTENSION: usize = 64 * 1024;

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

/// What the image looked like at load (or when last marked clean).
#[derive(Clone, Debug)]
struct Baseline {
    header: Header,
    affine: Affine,
    /// Small extensions by content; large ones by size only.
    extensions: Vec<(i32, Option<Vec<u8>>)>,
}

impl Baseline {
    fn of(header: &Header, affine: &Affine, extensions: &[Extension]) -> Baseline {
        Baseline {
            header: header.clone(),
            affine: *affine,
            extensions: extensions
                .iter()
                .map(|e| {
                    let small = e.content.len() <= LARGE_EXTENSION;
                    (e.code, small.then(|| e.content.clone()))
                })
                .collect(),
        }
    }
}

/// The user's override of the computed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Dirty,
}

/// A neuroimaging image held in memory.
#[derive(Debug)]
pub struct Image {
    header: Header,
    extensions: Vec<Extension>,
    affine: Affine,
    /// The data type of the image's numbers, the header's. After a datatype change the store
    /// may still hold the original's numbers, converted when read (`Store::Converted`).
    dtype: DataType,
    shape: Vec<u64>,
    store: Store,
    /// The uncompressed original's data file, open since load: what a clean image is served
    /// from, even after its data were read into memory.
    original_data: Option<Arc<FileSource>>,
    loaded: Option<format::LoadedFile>,
    origin: Option<Arc<Origin>>,
    baseline: Baseline,
    data_written: bool,
    large_extensions_out: BTreeSet<usize>,
    mark: Option<Mark>,
    changed_at: SystemTime,
    generation: u64,
    /// The value range of a base in an encoding, computed once and reused by every datatype
    /// change of that base.
    base_range: Option<(Base, Encoding, ValueRange)>,
    /// The header's `scl_slope` and `scl_inter` as they were for the base, restored when a
    /// change goes back to the base's own type.
    base_scaling: Option<(FieldValue, FieldValue)>,
}

impl Image {
    /// Loads an image's header, extensions and sidecar; the voxel data stay on disk.
    pub fn load(path: &Path) -> Result<Image, ImageError> {
        let path = std::path::absolute(path).map_err(|e| FormatError::io(path, e))?;
        let loaded = format::io::load(&path)?;
        let map = loaded.file_map.clone();
        let mut seen = Vec::new();
        let stat = |p: &Path| -> Result<(std::path::PathBuf, FileIdentity), FormatError> {
            let meta = std::fs::metadata(p).map_err(|e| FormatError::io(p, e))?;
            Ok((p.to_path_buf(), FileIdentity::of(&meta)))
        };
        seen.push(stat(&map.header)?);
        let store = if map.compressed {
            if !map.is_single() {
                seen.push(stat(&map.image)?);
            }
            Store::Unloaded
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
            Store::File(Arc::new(FileSource::new(
                file,
                map.image.clone(),
                (loaded.data_offset, loaded.data_len),
                loaded.header.order(),
                identity,
            )))
        };
        if let Some(mat) = map.sidecar().filter(|m| m.exists()) {
            seen.push(stat(&mat)?);
        }
        let header = loaded.header.clone();
        let affine = loaded.affine();
        Ok(Image {
            baseline: Baseline::of(&header, &affine, &loaded.extensions),
            extensions: loaded.extensions.clone(),
            shape: loaded.shape.clone(),
            header,
            affine,
            dtype: loaded.dtype,
            original_data: match &store {
                Store::File(source) => Some(source.clone()),
                _ => None,
            },
            store,
            changed_at: SystemTime::now(),
            origin: Some(Arc::new(Origin::new(map, seen))),
            loaded: Some(loaded),
            data_written: false,
            large_extensions_out: BTreeSet::new(),
            mark: None,
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
            baseline: Baseline::of(&header, &affine, &extensions),
            shape: data.shape().to_vec(),
            header,
            extensions,
            affine,
            dtype: data.dtype(),
            store: Store::Memory(Arc::new(data)),
            original_data: None,
            loaded: None,
            origin: None,
            data_written: false,
            large_extensions_out: BTreeSet::new(),
            mark: None,
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

    /// The original file as loaded, for reading data that are not yet in memory.
    pub fn loaded_file(&self) -> Option<&format::LoadedFile> {
        self.loaded.as_ref()
    }

    /// The data file of an uncompressed original, open since load.
    pub fn original_data(&self) -> Option<&Arc<FileSource>> {
        self.original_data.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
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
        match name {
            "datatype" => {
                let dtype = DataType::from_name(value).ok_or_else(|| {
                    ImageError::Refused(format!(
                        "unknown datatype '{value}': expected a name such as uint8, int16, \
                         int32, float32, float64, complex64, RGB, or a NIfTI code"
                    ))
                })?;
                return self.set_data_dtype(dtype);
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
        if self
            .loaded
            .as_ref()
            .and_then(|l| l.sidecar_affine)
            .is_none()
        {
            self.affine = self.header.best_affine();
        }
        self.touch();
        Ok(())
    }

    /// Sets several fields at once: all or none.
    pub fn set_fields(&mut self, edits: &[(String, String)]) -> Result<(), ImageError> {
        let saved = (
            self.header.clone(),
            self.affine,
            self.dtype,
            self.shape.clone(),
            self.store.clone(),
            self.base_scaling.clone(),
        );
        for (name, value) in edits {
            if let Err(e) = self.set_field(name, value) {
                (
                    self.header,
                    self.affine,
                    self.dtype,
                    self.shape,
                    self.store,
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
        if self.dtype == dtype {
            return Ok(());
        }
        let (base, from) = self.base()?;
        if from.dtype == dtype {
            // Back to the base's own type: served as it is, with its own scaling.
            self.store = base.store();
            if let Some((slope, inter)) = self.base_scaling.take() {
                self.header.set("scl_slope", &slope)?;
                self.header.set("scl_inter", &inter)?;
            } else {
                self.header.set_slope_inter(from.scaling);
            }
        } else {
            let range = if convert::needs_range(from, dtype) {
                Some(self.value_range(&base, from)?)
            } else {
                None
            };
            let target = convert::target_encoding(from, dtype, range)?;
            if !matches!(self.store, Store::Converted(_)) {
                self.base_scaling =
                    Some((self.header.get("scl_slope")?, self.header.get("scl_inter")?));
            }
            self.store =
                Store::Converted(Arc::new(data::Conversion::new(base, from, target, range)));
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
    /// A compressed original is loaded first; a conversion whose scaling was edited since
    /// (`scl_slope`, `scl_inter`) is taken as new data, as it now reads.
    fn base(&mut self) -> Result<(Base, Encoding), ImageError> {
        if matches!(self.store, Store::Unloaded) {
            self.data()?;
        }
        if let Store::Converted(c) = &self.store
            && self.encoding() != c.to
        {
            let data = self.materialize()?;
            self.store = Store::Memory(data);
            self.base_scaling = None;
        }
        Ok(match &self.store {
            Store::File(source) => (Base::File(source.clone()), self.encoding()),
            Store::Memory(data) => (Base::Memory(data.clone()), self.encoding()),
            Store::Converted(c) => (c.base.clone(), c.from),
            Store::Unloaded => unreachable!("loaded above"),
        })
    }

    /// The finite range of a base's values, in one pass over the stored data (not loading
    /// them), split over two threads; remembered for the next change of the same base.
    fn value_range(&mut self, base: &Base, from: Encoding) -> Result<ValueRange, ImageError> {
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
        let stored = match base {
            Base::File(source) => {
                let unit = from.dtype.size() as u64;
                let half = (source.len / unit / 2) * unit;
                let ranges = std::thread::scope(|s| {
                    let parts = [(0, half), (half, source.len)]
                        .map(|(a, b)| s.spawn(move || file_range(source, from.dtype, a, b)));
                    parts.map(|p| p.join().expect("range thread"))
                });
                let [a, b] = ranges;
                a.and_then(|a| b.map(|b| a.merge(b)))
                    .map_err(|e| self.data_error(e.to_string()))?
            }
            Base::Memory(data) => {
                convert::stored_range(from.dtype, format::ByteOrder::native(), data.bytes())
            }
        };
        let range = stored.scaled(from.scaling);
        self.base_range = Some((base.clone(), from, range));
        Ok(range)
    }

    /// Visits the stored data in chunks of whole elements, in the byte order they are held.
    fn for_each_chunk(
        &mut self,
        mut visit: impl FnMut(&[u8], format::ByteOrder),
    ) -> Result<(), ImageError> {
        if let Store::File(source) = &self.store {
            return read_chunks(source, self.dtype, 0, source.len, |bytes| {
                visit(bytes, source.order)
            })
            .map_err(|e| self.data_error(e.to_string()));
        }
        let data = self.data()?;
        visit(data.bytes(), format::ByteOrder::native());
        Ok(())
    }

    /// The converted array of a conversion, made once and kept with it.
    fn materialize(&self) -> Result<Arc<VoxelBuffer>, ImageError> {
        let Store::Converted(c) = &self.store else {
            unreachable!("only conversions are materialized")
        };
        if let Some(data) = c.materialized.get() {
            return Ok(data.clone());
        }
        let data = convert_all(&c.base, c.from, c.to, c.values, &self.shape)
            .map_err(|e| self.data_error(e.to_string()))?;
        Ok(c.materialized.get_or_init(|| Arc::new(data)).clone())
    }

    fn data_error(&self, why: String) -> ImageError {
        if let Some(origin) = &self.origin {
            origin.mark_lost(why.clone());
        }
        ImageError::DataUnavailable(why)
    }

    /// The voxel array, loaded on first use. Reading never dirties the image.
    /// After a datatype change the converted array is made and kept beside the data as they
    /// are, which later changes still convert from.
    pub fn data(&mut self) -> Result<&VoxelBuffer, ImageError> {
        if let Store::Converted(_) = self.store {
            self.materialize()?;
        } else if !matches!(self.store, Store::Memory(_)) {
            let buffer = self.read_stored()?;
            self.store = Store::Memory(Arc::new(buffer));
        }
        match &self.store {
            Store::Memory(buffer) => Ok(buffer),
            Store::Converted(c) => Ok(c.materialized.get().expect("materialized above")),
            _ => unreachable!("just loaded"),
        }
    }

    /// The voxel array for writing: the image is dirty from now on. If a served version still
    /// shares the array, it is copied first so that version's readers see no change.
    /// Written data are the data as they are from now on: a later datatype change converts
    /// from them.
    pub fn data_mut(&mut self) -> Result<&mut VoxelBuffer, ImageError> {
        if let Store::Converted(_) = self.store {
            self.store = Store::Memory(self.materialize()?);
            self.base_scaling = None;
        }
        self.data()?;
        self.data_written = true;
        self.touch();
        match &mut self.store {
            Store::Memory(buffer) => Ok(Arc::make_mut(buffer)),
            _ => unreachable!("loaded by data()"),
        }
    }

    /// The values a reader sees (nibabel's `get_fdata()`), in file order.
    pub fn fdata(&mut self) -> Result<Vec<f64>, ImageError> {
        let from = self.encoding();
        let mut out = Vec::new();
        let mut values = Vec::new();
        self.for_each_chunk(|bytes, order| {
            convert::decode(from.dtype, order, bytes, &mut values);
            convert::rescale(
                &mut values,
                from,
                Encoding {
                    dtype: DataType::Float64,
                    scaling: None,
                },
            );
            out.extend_from_slice(&values);
        })?;
        Ok(out)
    }

    fn read_stored(&self) -> Result<VoxelBuffer, ImageError> {
        let dtype = self.dtype;
        match &self.store {
            Store::Memory(buffer) => Ok((**buffer).clone()),
            Store::Converted(_) => Ok((*self.materialize()?).clone()),
            Store::File(source) => {
                let mut bytes = vec![0; source.len as usize];
                source
                    .read_exact_at(&mut bytes, 0)
                    .map_err(|e| self.data_error(e.to_string()))?;
                Ok(VoxelBuffer::from_bytes(
                    dtype,
                    &self.shape,
                    &bytes,
                    source.order,
                ))
            }
            Store::Unloaded => {
                let loaded = self.loaded.as_ref().expect("unloaded data have a file");
                if let Some(why) = self.origin.as_ref().and_then(|o| o.check()) {
                    return Err(ImageError::DataUnavailable(format!(
                        "{why}; its data were never loaded"
                    )));
                }
                let bytes = read_original(loaded, self.origin.as_deref())
                    .map_err(ImageError::DataUnavailable)?;
                if let Some(why) = self.origin.as_ref().and_then(|o| o.check()) {
                    return Err(ImageError::DataUnavailable(format!(
                        "{why} while its data were being read"
                    )));
                }
                Ok(VoxelBuffer::from_bytes(
                    dtype,
                    &self.shape,
                    &bytes,
                    loaded.header.order(),
                ))
            }
        }
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
            self.large_extensions_out.insert(index);
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
        self.baseline = Baseline::of(&self.header, &self.affine, &self.extensions);
        self.data_written = false;
        self.large_extensions_out.clear();
        self.mark = None;
        self.touch();
    }

    /// The user's override: the image is to be taken as changed until marked clean.
    pub fn mark_dirty(&mut self) {
        self.mark = Some(Mark::Dirty);
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
        if self.mark == Some(Mark::Dirty) {
            reasons.push(Reason::MarkedDirty);
        }
        if self.data_written {
            reasons.push(Reason::DataWritten);
        }
        for name in self.header.differing_fields(&self.baseline.header) {
            reasons.push(Reason::HeaderField(name.to_string()));
        }
        if format::affine::max_abs_diff(&self.affine, &self.baseline.affine) > 0.0 {
            reasons.push(Reason::AffineChanged);
        }
        if self.extensions.len() != self.baseline.extensions.len() {
            reasons.push(Reason::ExtensionsAddedOrRemoved);
        }
        for (i, (ext, (code, content))) in self
            .extensions
            .iter()
            .zip(&self.baseline.extensions)
            .enumerate()
        {
            let changed = match content {
                Some(bytes) => ext.code != *code || ext.content != *bytes,
                None => ext.code != *code || self.large_extensions_out.contains(&i),
            };
            if changed {
                reasons.push(if content.is_none() {
                    Reason::LargeExtensionHandedOut(i)
                } else {
                    Reason::ExtensionChanged(i)
                });
            }
        }
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

/// The data of a compressed original, read whole. A failure is kept by the origin: the state
/// names it, and later reads fail with it at once.
pub fn read_original(
    loaded: &format::LoadedFile,
    origin: Option<&Origin>,
) -> Result<Vec<u8>, String> {
    if let Some(why) = origin.and_then(Origin::unreadable) {
        return Err(why.to_string());
    }
    loaded.read_data().map_err(|e| {
        let why = e.to_string();
        if let Some(origin) = origin {
            origin.mark_unreadable(why.clone());
        }
        why
    })
}

/// The numbers of a base converted from `from` to `to`, in memory in native byte order, on
/// two threads.
fn convert_all(
    base: &Base,
    from: Encoding,
    to: Encoding,
    values: Option<ValueRange>,
    shape: &[u64],
) -> std::io::Result<VoxelBuffer> {
    let mut out = VoxelBuffer::zeros(to.dtype, shape);
    let (in_unit, out_unit) = (from.dtype.size(), to.dtype.size());
    let convert_part = |dst: &mut [u8], first_voxel: usize| -> std::io::Result<()> {
        let chunk_voxels = (4 << 20) / in_unit;
        let mut buf = Vec::new();
        for (i, dst) in dst.chunks_mut(chunk_voxels * out_unit).enumerate() {
            let n = dst.len() / out_unit;
            let at = ((first_voxel + i * chunk_voxels) * in_unit) as u64;
            buf.resize(n * in_unit, 0);
            base.read_native(&mut buf, at, from.dtype.swap_width())?;
            convert::convert_into(&buf, format::ByteOrder::native(), from, to, values, dst);
        }
        Ok(())
    };
    let half = out.bytes().len() / out_unit / 2;
    let (first, second) = out.bytes_mut().split_at_mut(half * out_unit);
    std::thread::scope(|s| {
        let other = s.spawn(|| convert_part(second, half));
        let mine = convert_part(first, 0);
        other.join().expect("conversion thread").and(mine)
    })?;
    Ok(out)
}

/// The stored range of data bytes `[a, b)` of an original file, read in 4 MiB chunks.
fn file_range(source: &FileSource, dtype: DataType, a: u64, b: u64) -> std::io::Result<ValueRange> {
    let mut range = ValueRange::default();
    read_chunks(source, dtype, a, b, |bytes| {
        range = range.merge(convert::stored_range(dtype, source.order, bytes));
    })?;
    Ok(range)
}

/// Visits data bytes `[a, b)` of an original file in 4 MiB chunks of whole elements, through
/// one reused buffer.
fn read_chunks(
    source: &FileSource,
    dtype: DataType,
    a: u64,
    b: u64,
    mut visit: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let chunk = ((4 << 20) / dtype.size() * dtype.size()) as u64;
    let mut buf = vec![0; chunk.min(b - a) as usize];
    let mut at = a;
    while at < b {
        let n = chunk.min(b - at) as usize;
        source.read_exact_at(&mut buf[..n], at)?;
        visit(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

fn refused_field(name: &str, why: &str) -> ImageError {
    ImageError::Refused(format!("header field '{name}' cannot be set: {why}"))
}
