//! Voxel data: nibabel's data object. The array stays in the original file until someone asks
//! for it; once in memory it is shared copy-on-write with the versions being served, so a
//! reader keeps the bytes it opened while the image is edited.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};

use super::convert::{Encoding, ValueRange};
use super::origin::FileIdentity;
use crate::format::{ByteOrder, DataType};

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

/// The data as they are, before any datatype change: the original file's numbers, or an
/// array in memory (loaded, handed over, or written to). Every datatype change converts from
/// here, never from an earlier change's rounded numbers.
#[derive(Clone, Debug)]
pub enum Base {
    File(Arc<FileSource>),
    Memory(Arc<VoxelBuffer>),
}

impl Base {
    /// Fills `buf` with the stored numbers from byte `at`, in native byte order (swapped as
    /// units of `width` bytes).
    pub fn read_native(&self, buf: &mut [u8], at: u64, width: usize) -> io::Result<()> {
        match self {
            Base::File(source) => source.read_native(buf, at, width),
            Base::Memory(data) => {
                let at = at as usize;
                buf.copy_from_slice(&data.bytes()[at..at + buf.len()]);
                Ok(())
            }
        }
    }

    /// Whether both are the very same data (not merely equal bytes).
    pub fn is(&self, other: &Base) -> bool {
        match (self, other) {
            (Base::File(a), Base::File(b)) => Arc::ptr_eq(a, b),
            (Base::Memory(a), Base::Memory(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The store that serves the base unchanged.
    pub fn store(&self) -> Store {
        match self {
            Base::File(source) => Store::File(source.clone()),
            Base::Memory(data) => Store::Memory(data.clone()),
        }
    }
}

/// A base's numbers seen in another encoding, converted by range when read.
#[derive(Debug)]
pub struct Conversion {
    pub base: Base,
    pub from: Encoding,
    pub to: Encoding,
    /// The range of the values, which bounds the converted numbers as nibabel's writer does.
    pub values: Option<ValueRange>,
    /// The whole converted array, made only when a caller asks for the array.
    pub materialized: std::sync::OnceLock<Arc<VoxelBuffer>>,
}

impl Conversion {
    pub fn new(base: Base, from: Encoding, to: Encoding, values: Option<ValueRange>) -> Self {
        Conversion {
            base,
            from,
            to,
            values,
            materialized: std::sync::OnceLock::new(),
        }
    }

    /// Fills `out` (whole elements of the new type, native byte order) with the converted
    /// numbers from element `first` on.
    pub fn read(&self, out: &mut [u8], first: u64) -> io::Result<()> {
        thread_local! {
            // Reused across reads: a fresh buffer per read would fault in new pages each time.
            static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let (in_unit, out_unit) = (self.from.dtype.size(), self.to.dtype.size());
        let count = out.len() / out_unit;
        STORED.with_borrow_mut(|stored| {
            stored.resize(count * in_unit, 0);
            let width = self.from.dtype.swap_width();
            self.base
                .read_native(stored, first * in_unit as u64, width)?;
            super::convert::convert_into(
                stored,
                ByteOrder::native(),
                self.from,
                self.to,
                self.values,
                out,
            );
            Ok(())
        })
    }
}

/// Where an image's voxel data are right now.
#[derive(Clone, Debug)]
pub enum Store {
    /// Still in the uncompressed original; read by range.
    File(Arc<FileSource>),
    /// A base (the original file or memory) in another encoding: converted by range when read
    /// (after a data type change), so converting holds no memory.
    Converted(Arc<Conversion>),
    /// In a compressed original or one not open: must be loaded before use.
    Unloaded,
    /// In memory.
    Memory(Arc<VoxelBuffer>),
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
