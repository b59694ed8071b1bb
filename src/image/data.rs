//! Voxel data: nibabel's data object. The array stays in the original file until someone asks
//! for it; once in memory it is shared copy-on-write with the versions being served, so a
//! reader keeps the bytes it opened while the image is edited.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};

use super::convert::{Encoding, ValueRange};
use super::origin::{FileIdentity, Origin};
use crate::format::gzindex::{GzCache, GzIndex, GzOptions};
use crate::format::{ByteOrder, DataType, FormatError};

/// Voxel bytes in memory, native byte order, file (Fortran) order of voxels, aligned to 8
/// bytes so that typed views are sound.
#[derive(Debug)]
pub struct VoxelBuffer {
    dtype: DataType,
    shape: Vec<u64>,
    storage: Storage,
    len: usize,
}

/// Where the bytes live: our own memory, or a shared-memory file another process filled and
/// handed over (mapped, not copied; copied only when written).
#[derive(Debug)]
enum Storage {
    Owned(Vec<u64>),
    Mapped { map: memmap2::Mmap, offset: usize },
}

impl Clone for VoxelBuffer {
    /// A copy in our own memory, whatever the original's storage.
    fn clone(&self) -> Self {
        let mut words = vec![0u64; self.len.div_ceil(8)];
        // SAFETY: `words` holds at least `len` bytes; u8 has no alignment needs.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), self.len) };
        dst.copy_from_slice(self.bytes());
        VoxelBuffer {
            dtype: self.dtype,
            shape: self.shape.clone(),
            storage: Storage::Owned(words),
            len: self.len,
        }
    }
}

impl PartialEq for VoxelBuffer {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype && self.shape == other.shape && self.bytes() == other.bytes()
    }
}

/// A Rust element type that matches a NIfTI data type.
pub trait Element: Copy + 'static {
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(impl Element for $t { const DTYPE: DataType = DataType::$d; })*};
}
element!(u8 => Uint8, i8 => Int8, i16 => Int16, u16 => Uint16, i32 => Int32, u32 => Uint32,
         i64 => Int64, u64 => Uint64, f32 => Float32, f64 => Float64);

/// Why a typed view was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the data are {actual}, not {requested}")]
pub struct DtypeMismatch {
    pub actual: DataType,
    pub requested: DataType,
}

impl VoxelBuffer {
    /// A zero-filled array.
    pub fn zeros(dtype: DataType, shape: &[u64]) -> VoxelBuffer {
        let len = shape.iter().product::<u64>() as usize * dtype.size();
        VoxelBuffer {
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Owned(vec![0; len.div_ceil(8)]),
            len,
        }
    }

    /// Voxels held in a mapped file (a memfd from another process), `offset` bytes in. Every
    /// number here comes from a request, so each sum and product is checked before it bounds
    /// anything.
    pub fn mapped(
        dtype: DataType,
        shape: &[u64],
        map: memmap2::Mmap,
        offset: u64,
    ) -> Result<VoxelBuffer, String> {
        let len = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("shape {shape:?} of {dtype}: the byte count overflows"))?;
        if !offset.is_multiple_of(8) {
            return Err(format!("data_offset {offset} is not a multiple of 8"));
        }
        let need = offset.checked_add(len).ok_or_else(|| {
            format!("data_offset {offset} plus the {len} bytes of the data overflows")
        })?;
        if (map.len() as u64) < need {
            return Err(format!(
                "the shared data hold {} bytes; shape {shape:?} of {dtype} needs {len} from \
                 offset {offset}",
                map.len()
            ));
        }
        // Both fit in the map's length, itself a usize.
        let (offset, len) = (offset as usize, len as usize);
        Ok(VoxelBuffer {
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Mapped { map, offset },
            len,
        })
    }

    /// Takes bytes in `order` and keeps them in native order.
    pub fn from_bytes(dtype: DataType, shape: &[u64], bytes: &[u8], order: ByteOrder) -> Self {
        let mut buf = VoxelBuffer::zeros(dtype, shape);
        assert_eq!(
            bytes.len(),
            buf.len,
            "byte count must match shape and dtype"
        );
        buf.bytes_mut().copy_from_slice(bytes);
        if order != ByteOrder::native() {
            swap_in_place(buf.bytes_mut(), dtype.swap_width());
        }
        buf
    }

    /// Typed data in file order.
    pub fn from_vec<T: Element>(shape: &[u64], values: &[T]) -> VoxelBuffer {
        let mut buf = VoxelBuffer::zeros(T::DTYPE, shape);
        assert_eq!(values.len() * T::DTYPE.size(), buf.len);
        buf.typed_mut::<T>()
            .expect("dtype matches")
            .copy_from_slice(values);
        buf
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn base(&self) -> *const u8 {
        match &self.storage {
            Storage::Owned(words) => words.as_ptr().cast(),
            Storage::Mapped { map, offset } => map[*offset..].as_ptr(),
        }
    }

    /// Our own copy of the bytes, made on the first write to mapped data.
    fn owned_words(&mut self) -> &mut Vec<u64> {
        if let Storage::Mapped { .. } = self.storage {
            *self = self.clone();
        }
        match &mut self.storage {
            Storage::Owned(words) => words,
            Storage::Mapped { .. } => unreachable!("just copied"),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the storage holds at least `len` initialized bytes from `base` (checked in
        // `mapped`, sized in `zeros`); u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.base(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let words = self.owned_words();
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
    }

    pub fn typed<T: Element>(&self) -> Result<&[T], DtypeMismatch> {
        self.check::<T>()?;
        let n = self.len / std::mem::size_of::<T>();
        // SAFETY: the storage is 8-byte aligned (a Vec<u64>, or a page-aligned map at an offset
        // that is a multiple of 8), which covers every Element type; `check` made sure the
        // bytes hold values of T, and every bit pattern is a valid T.
        Ok(unsafe { std::slice::from_raw_parts(self.base().cast::<T>(), n) })
    }

    pub fn typed_mut<T: Element>(&mut self) -> Result<&mut [T], DtypeMismatch> {
        self.check::<T>()?;
        let n = self.len / std::mem::size_of::<T>();
        let words = self.owned_words();
        // SAFETY: as in `typed`, with exclusive access through `&mut self`.
        Ok(unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<T>(), n) })
    }

    fn check<T: Element>(&self) -> Result<(), DtypeMismatch> {
        if T::DTYPE == self.dtype {
            Ok(())
        } else {
            Err(DtypeMismatch {
                actual: self.dtype,
                requested: T::DTYPE,
            })
        }
    }

    fn nd_shape(&self) -> IxDyn {
        let dims: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        IxDyn(&dims)
    }

    /// An ndarray view with the image's shape (Fortran order, as in the file).
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>, DtypeMismatch> {
        let shape = self.nd_shape();
        let data = self.typed::<T>()?;
        Ok(ArrayViewD::from_shape(shape.f(), data).expect("length matches shape"))
    }

    pub fn view_mut<T: Element>(&mut self) -> Result<ArrayViewMutD<'_, T>, DtypeMismatch> {
        let shape = self.nd_shape();
        let data = self.typed_mut::<T>()?;
        Ok(ArrayViewMutD::from_shape(shape.f(), data).expect("length matches shape"))
    }
}

/// Reverses each `width`-byte unit, converting between byte orders.
pub fn swap_in_place(bytes: &mut [u8], width: usize) {
    if width > 1 {
        for unit in bytes.chunks_exact_mut(width) {
            unit.reverse();
        }
    }
}

/// The uncompressed data of an original file, read by range without loading it.
///
/// The file is opened once at load and every read checks afterwards that it is still the file
/// that was seen then, so a changed original gives an error, never mixed bytes.
#[derive(Debug)]
pub struct FileSource {
    pub file: File,
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
    pub order: ByteOrder,
    pub seen: FileIdentity,
    /// The whole file mapped, made on first use (None if it cannot be mapped).
    map: std::sync::OnceLock<Option<Arc<memmap2::Mmap>>>,
}

impl FileSource {
    pub fn new(
        file: File,
        path: std::path::PathBuf,
        (offset, len): (u64, u64),
        order: ByteOrder,
        seen: FileIdentity,
    ) -> FileSource {
        FileSource {
            file,
            path,
            offset,
            len,
            order,
            seen,
            map: std::sync::OnceLock::new(),
        }
    }

    /// The whole file, mapped shared and read-only, for handing ranges of it to the kernel
    /// without copying them here first. Only the kernel may read the mapping: should the file
    /// be truncated meanwhile, its copy fails cleanly where a read here would be killed by
    /// SIGBUS.
    pub fn mapping(&self) -> Option<&Arc<memmap2::Mmap>> {
        self.map
            .get_or_init(|| {
                // SAFETY: the mapping is only handed to the kernel (see above), never read here.
                unsafe { memmap2::Mmap::map(&self.file) }.ok().map(Arc::new)
            })
            .as_ref()
    }

    /// Fills `buf` from data byte `at`, failing if the file changed since load.
    pub fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, self.offset + at)?;
        self.check_unchanged()
    }

    /// As [`FileSource::read_exact_at`], with the numbers (swapped as units of `width` bytes)
    /// put in native byte order in place.
    pub fn read_native(&self, buf: &mut [u8], at: u64, width: usize) -> io::Result<()> {
        self.read_exact_at(buf, at)?;
        if self.order != ByteOrder::native() {
            swap_in_place(buf, width);
        }
        Ok(())
    }

    pub fn check_unchanged(&self) -> io::Result<()> {
        let now = FileIdentity::of(&self.file.metadata()?);
        if !self.seen.same_content(&now) {
            return Err(io::Error::other(format!(
                "{}: original modified on disk since load",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// A compressed original's data, read by range through a gzip index (see
/// [`crate::format::gzindex`]): a read inflates from the nearest access point before it, and
/// the index, built by the first pass, serves every later version of the image.
pub struct GzSource {
    index: GzIndex,
    file: Arc<File>,
    pub path: std::path::PathBuf,
    /// Where the data start in the decompressed stream.
    offset: u64,
    len: u64,
    order: ByteOrder,
    seen: FileIdentity,
    /// Told when the stream turns out broken, so the image's state names it.
    origin: Arc<Origin>,
    /// Set while a thread inflates ahead of the reader.
    ahead_busy: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for GzSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzSource")
            .field("path", &self.path)
            .field("index", &self.index)
            .finish()
    }
}

impl GzSource {
    /// Indexes the data of `path` (decompressed bytes `[offset, offset + len)`); nothing is
    /// inflated yet. Decompressed segments are cached in `cache`, shared by the mount.
    pub fn open(
        path: &std::path::Path,
        (offset, len): (u64, u64),
        order: ByteOrder,
        origin: Arc<Origin>,
        cache: Arc<GzCache>,
    ) -> Result<GzSource, crate::format::FormatError> {
        let file = Arc::new(File::open(path).map_err(|e| FormatError::io(path, e))?);
        let seen = FileIdentity::of(&file.metadata().map_err(|e| FormatError::io(path, e))?);
        let options = GzOptions {
            cache: Some(cache),
            ..GzOptions::default()
        };
        let index = GzIndex::new(file.clone(), options).map_err(|e| e.for_file(path))?;
        Ok(GzSource {
            index,
            file,
            path: path.to_path_buf(),
            offset,
            len,
            order,
            seen,
            origin,
            ahead_busy: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Fills `buf` from data byte `at`, in the file's byte order. A broken stream is recorded
    /// by the origin, so the state names it and every later read fails at once.
    fn read_exact_at(self: &Arc<Self>, buf: &mut [u8], at: u64) -> io::Result<()> {
        if let Some(why) = self.origin.unreadable() {
            return Err(io::Error::other(why.to_string()));
        }
        let broken = |why: String| {
            self.origin.mark_unreadable(why.clone());
            io::Error::other(why)
        };
        let start = self
            .offset
            .checked_add(at)
            .ok_or_else(|| io::Error::other("data offset overflows"))?;
        let got = self
            .index
            .read_at(buf, start)
            .map_err(|e| broken(e.for_file(&self.path).to_string()))?;
        if got < buf.len() {
            let held = at + got as u64;
            return Err(broken(format!(
                "{}: gzip stream ends at byte {held} of the data, which need {} bytes \
                 (truncated?)",
                self.path.display(),
                self.len
            )));
        }
        if at + buf.len() as u64 >= self.len {
            // The last bytes of the data: the pass goes on to the stream's end, so that its
            // checksum vouches for what was served.
            self.index
                .build_all()
                .map_err(|e| broken(e.for_file(&self.path).to_string()))?;
        }
        let now = FileIdentity::of(&self.file.metadata()?);
        if !self.seen.same_content(&now) {
            let why = format!(
                "{}: original modified on disk since load",
                self.path.display()
            );
            self.origin.mark_lost(why.clone());
            return Err(io::Error::other(why));
        }
        self.read_ahead(start + buf.len() as u64);
        Ok(())
    }

    /// Decompresses ahead of a sequential reader on another thread, one such thread at a time
    /// per image; its errors are left for the reader to meet. While the first pass is still
    /// under way, the thread runs it a few segments ahead (a step at a time, so the reader is
    /// never locked out for long); once the index is complete, it inflates the segment after
    /// the next one into the cache while the reader inflates the next itself: two cores
    /// inflating for one reader (access points are independent).
    fn read_ahead(self: &Arc<Self>, end: u64) {
        use std::sync::atomic::Ordering;
        if self.ahead_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let span = self.index.span();
        let first_pass = self.index.len_if_known().is_none();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("gzip-ahead".into())
            .spawn(move || {
                if first_pass {
                    let target = end.saturating_add(span.saturating_mul(3));
                    let mut at = end;
                    while at < target && me.index.build_to(at).is_ok_and(|got| got >= at) {
                        at = at.saturating_add(span / 2);
                    }
                } else {
                    let _ = me.index.prefetch(end.saturating_add(span));
                }
                me.ahead_busy.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.ahead_busy.store(false, Ordering::Release);
        }
    }

    /// What the index holds, for tests and status.
    pub fn stats(&self) -> crate::format::gzindex::GzStats {
        self.index.stats()
    }
}

/// nibabel's data object (its `ArrayProxy`): where an image's numbers are, as one immutable,
/// cheaply cloned value with one way to read them, [`DataObj::read_at`]. The renderer, `save`,
/// the value-range pass and datatype changes all read through it, so none of them needs to
/// know where the bytes live. The shape is the header's (a reshape keeps the bytes).
#[derive(Clone, Debug)]
pub struct DataObj {
    dtype: DataType,
    len: u64,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// An uncompressed original file, read by position (or handed to the kernel mapped).
    File(Arc<FileSource>),
    /// A compressed original, read by range through its gzip index.
    Gzip(Arc<GzSource>),
    /// An array in memory (loaded, written, or handed over in a memfd): native byte order.
    Memory(Arc<VoxelBuffer>),
    /// Another data object's numbers in another encoding, converted per read: native order.
    Converted(Arc<Conversion>),
}

impl DataObj {
    pub fn file(dtype: DataType, source: Arc<FileSource>) -> DataObj {
        DataObj {
            dtype,
            len: source.len,
            kind: Kind::File(source),
        }
    }

    pub fn gzip(dtype: DataType, source: Arc<GzSource>) -> DataObj {
        DataObj {
            dtype,
            len: source.len,
            kind: Kind::Gzip(source),
        }
    }

    pub fn memory(data: Arc<VoxelBuffer>) -> DataObj {
        DataObj {
            dtype: data.dtype(),
            len: data.bytes().len() as u64,
            kind: Kind::Memory(data),
        }
    }

    /// `base`'s numbers read as `from`, served as `to`.
    pub fn converted(
        base: DataObj,
        from: Encoding,
        to: Encoding,
        values: Option<ValueRange>,
    ) -> DataObj {
        let count = base.len / base.dtype.size() as u64;
        DataObj {
            dtype: to.dtype,
            len: count * to.dtype.size() as u64,
            kind: Kind::Converted(Arc::new(Conversion::new(base, from, to, values))),
        }
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// The number of data bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte order [`DataObj::read_at`] gives.
    pub fn order(&self) -> ByteOrder {
        match &self.kind {
            Kind::File(f) => f.order,
            Kind::Gzip(g) => g.order,
            Kind::Memory(_) | Kind::Converted(_) => ByteOrder::native(),
        }
    }

    /// Where the numbers are, in a word: `file`, `gzip`, `memory` or `converted`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::File(_) => "file",
            Kind::Gzip(_) => "gzip",
            Kind::Memory(_) => "memory",
            Kind::Converted(_) => "converted",
        }
    }

    /// Fills `buf` with data bytes from `at`, in [`DataObj::order`]. The range must lie in
    /// the data; a range outside is an error, never a panic.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let end = at
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "read of {} bytes at data byte {at} is past the {} bytes of the data",
                    buf.len(),
                    self.len
                ))
            })?;
        match &self.kind {
            Kind::File(f) => f.read_exact_at(buf, at),
            Kind::Gzip(g) => g.read_exact_at(buf, at),
            Kind::Memory(data) => {
                buf.copy_from_slice(&data.bytes()[at as usize..end as usize]);
                Ok(())
            }
            Kind::Converted(c) => c.read_at(buf, at),
        }
    }

    /// As [`DataObj::read_at`], in native byte order.
    pub fn read_native(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.read_at(buf, at)?;
        if self.order() != ByteOrder::native() {
            swap_in_place(buf, self.dtype.swap_width());
        }
        Ok(())
    }

    /// Whether both are the very same data (not merely equal bytes).
    pub fn is(&self, other: &DataObj) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::File(a), Kind::File(b)) => Arc::ptr_eq(a, b),
            (Kind::Gzip(a), Kind::Gzip(b)) => Arc::ptr_eq(a, b),
            (Kind::Memory(a), Kind::Memory(b)) => Arc::ptr_eq(a, b),
            (Kind::Converted(a), Kind::Converted(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The uncompressed original file, when the numbers are read straight from it.
    pub fn file_source(&self) -> Option<&Arc<FileSource>> {
        match &self.kind {
            Kind::File(f) => Some(f),
            _ => None,
        }
    }

    /// The array, when the numbers are held in memory.
    pub fn in_memory(&self) -> Option<&Arc<VoxelBuffer>> {
        match &self.kind {
            Kind::Memory(data) => Some(data),
            _ => None,
        }
    }

    /// The array in memory: the data's own, or the one a conversion made when asked.
    pub fn memory_view(&self) -> Option<&VoxelBuffer> {
        match &self.kind {
            Kind::Memory(data) => Some(data),
            Kind::Converted(c) => c.materialized.get().map(|d| &**d),
            Kind::File(_) | Kind::Gzip(_) => None,
        }
    }

    /// Adds the arrays these numbers are held in (its own, a conversion's and its base's) to
    /// `arrays`, each once however many data objects share it.
    pub fn memory_arrays<'a>(&'a self, arrays: &mut Vec<&'a Arc<VoxelBuffer>>) {
        let mut add = |a: &'a Arc<VoxelBuffer>| {
            if !arrays.iter().any(|b| Arc::ptr_eq(a, b)) {
                arrays.push(a);
            }
        };
        match &self.kind {
            Kind::Memory(data) => add(data),
            Kind::Converted(c) => {
                if let Some(data) = c.materialized.get() {
                    add(data);
                }
                c.base.memory_arrays(arrays);
            }
            Kind::File(_) | Kind::Gzip(_) => {}
        }
    }

    /// The array in memory for writing, copied first if a served version still shares it
    /// (so the value stays immutable to everyone who holds a clone).
    pub fn make_mut(&mut self) -> Option<&mut VoxelBuffer> {
        match &mut self.kind {
            Kind::Memory(data) => Some(Arc::make_mut(data)),
            _ => None,
        }
    }

    /// The conversion, when this is a converted view.
    pub fn conversion(&self) -> Option<&Conversion> {
        match &self.kind {
            Kind::Converted(c) => Some(c),
            _ => None,
        }
    }

    /// The gzip source, when the numbers are in a compressed original.
    pub fn gzip_source(&self) -> Option<&Arc<GzSource>> {
        match &self.kind {
            Kind::Gzip(g) => Some(g),
            _ => None,
        }
    }

    /// The whole array in memory, native byte order, with `shape` (nibabel's `get_fdata`
    /// side: wanted in memory). An array already in memory is shared; a conversion keeps the
    /// array it makes, so asking twice converts once.
    pub fn to_memory(&self, shape: &[u64]) -> io::Result<Arc<VoxelBuffer>> {
        match &self.kind {
            Kind::Memory(data) => Ok(data.clone()),
            Kind::Converted(c) => {
                if let Some(data) = c.materialized.get() {
                    return Ok(data.clone());
                }
                let data = Arc::new(read_all(self, shape)?);
                Ok(c.materialized.get_or_init(|| data).clone())
            }
            Kind::File(_) | Kind::Gzip(_) => Ok(Arc::new(read_all(self, shape)?)),
        }
    }
}

/// Every number of `data` into a new array, in 4 MiB chunks; a conversion from an
/// uncompressed file uses both cores (a gzip stream is read in order, one pass).
fn read_all(data: &DataObj, shape: &[u64]) -> io::Result<VoxelBuffer> {
    let count = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(data.dtype.size() as u64));
    if count != Some(data.len) {
        return Err(io::Error::other(format!(
            "shape {shape:?} of {} does not match the {} bytes of the data",
            data.dtype, data.len
        )));
    }
    let mut out = VoxelBuffer::zeros(data.dtype, shape);
    let unit = data.dtype.size();
    let chunk = (4 << 20) / unit * unit;
    let fill = |dst: &mut [u8], at: u64| -> io::Result<()> {
        for (i, part) in dst.chunks_mut(chunk).enumerate() {
            data.read_native(part, at + (i * chunk) as u64)?;
        }
        Ok(())
    };
    let parallel = matches!(&data.kind, Kind::Converted(c) if c.base.gzip_source().is_none());
    let bytes = out.bytes_mut();
    if parallel {
        let half = bytes.len() / unit / 2 * unit;
        let (first, second) = bytes.split_at_mut(half);
        std::thread::scope(|s| {
            let other = s.spawn(|| fill(second, half as u64));
            let mine = fill(first, 0);
            other.join().expect("conversion thread").and(mine)
        })?;
    } else {
        fill(bytes, 0)?;
    }
    Ok(out)
}

/// A data object's numbers seen in another encoding, converted by range when read. Every
/// datatype change converts from the data as they are (the original's numbers, or an array in
/// memory), never from an earlier change's rounded numbers.
#[derive(Debug)]
pub struct Conversion {
    pub base: DataObj,
    pub from: Encoding,
    pub to: Encoding,
    /// The range of the values, which bounds the converted numbers as nibabel's writer does.
    pub values: Option<ValueRange>,
    /// The whole converted array, made only when a caller asks for the array.
    materialized: std::sync::OnceLock<Arc<VoxelBuffer>>,
}

impl Conversion {
    fn new(base: DataObj, from: Encoding, to: Encoding, values: Option<ValueRange>) -> Self {
        Conversion {
            base,
            from,
            to,
            values,
            materialized: std::sync::OnceLock::new(),
        }
    }

    /// Fills `out` with converted bytes `[at, at + out.len())`, native byte order; a range
    /// that cuts numbers is widened to whole ones and trimmed again.
    fn read_at(&self, out: &mut [u8], at: u64) -> io::Result<()> {
        let unit = self.to.dtype.size() as u64;
        let first = at / unit;
        let last = (at + out.len() as u64).div_ceil(unit);
        if first * unit == at && last * unit == at + out.len() as u64 {
            return self.read(out, first);
        }
        let mut whole = vec![0; ((last - first) * unit) as usize];
        self.read(&mut whole, first)?;
        let skip = (at - first * unit) as usize;
        out.copy_from_slice(&whole[skip..skip + out.len()]);
        Ok(())
    }

    /// Fills `out` (whole elements of the new type, native byte order) with the converted
    /// numbers from element `first` on.
    fn read(&self, out: &mut [u8], first: u64) -> io::Result<()> {
        thread_local! {
            // Reused across reads: a fresh buffer per read would fault in new pages each time.
            static STORED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let (in_unit, out_unit) = (self.from.dtype.size(), self.to.dtype.size());
        let count = out.len() / out_unit;
        // Taken out while in use: a conversion of a conversion reads its base through it too.
        let mut buf = STORED.take();
        buf.resize(count * in_unit, 0);
        let result = self
            .base
            .read_native(&mut buf, first * in_unit as u64)
            .map(|()| {
                super::convert::convert_into(
                    &buf,
                    ByteOrder::native(),
                    self.from,
                    self.to,
                    self.values,
                    out,
                )
            });
        STORED.set(buf);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(len: usize) -> memmap2::Mmap {
        memmap2::MmapMut::map_anon(len)
            .unwrap()
            .make_read_only()
            .unwrap()
    }

    #[test]
    fn a_data_offset_near_2_to_the_64_is_refused_not_wrapped() {
        let err = VoxelBuffer::mapped(DataType::Float32, &[4], map_of(64), u64::MAX - 7)
            .expect_err("must be refused");
        assert!(
            err.contains(&format!("data_offset {} plus", u64::MAX - 7)),
            "{err}"
        );
        assert!(err.contains("overflows"), "{err}");
        for offset in [u64::MAX - 15, 1 << 63] {
            let err = VoxelBuffer::mapped(DataType::Float32, &[2], map_of(64), offset)
                .expect_err("must be refused");
            assert!(err.contains(&format!("offset {offset}")), "{err}");
        }
    }

    #[test]
    fn a_shape_whose_byte_count_overflows_is_refused() {
        let err = VoxelBuffer::mapped(DataType::Float64, &[1 << 32, 1 << 30], map_of(64), 0)
            .expect_err("must be refused");
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn data_past_the_end_of_the_map_are_refused_and_data_inside_are_served() {
        let err = VoxelBuffer::mapped(DataType::Uint8, &[60], map_of(64), 8).unwrap_err();
        assert!(err.contains("hold 64 bytes"), "{err}");
        let ok = VoxelBuffer::mapped(DataType::Uint8, &[56], map_of(64), 8).unwrap();
        assert_eq!(ok.bytes(), &[0u8; 56][..]);
    }
}
