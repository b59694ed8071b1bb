//! Rendering: an image laid out as a single-file NIfTI, produced for any byte range on demand.
//!
//! A [`Rendering`] is an immutable snapshot of one image version. The header and extensions are
//! computed once (a few KiB); the data bytes are produced per request from the image's data
//! object ([`DataObj`]), wherever the numbers are (the original file, a gzip stream read by
//! range through its index, memory, or a conversion of any of these), swapped into the
//! header's byte order when needed. Nothing is written to disk.

use std::io::{self, Write};
use std::sync::Arc;

use crate::format::io::single_file_prefix;
use crate::format::{ByteOrder, Flavor};
use crate::image::data::swap_in_place;
use crate::image::{DataObj, Image, VoxelBuffer};

pub mod save;
pub use save::{save_image, save_image_with_progress};

/// Bytes of a rendered file: copied, a range of voxel data shared with the image, or a range
/// of the mapped original for the kernel to copy (see [`crate::image::FileSource::mapping`]: meant for a
/// reply, not for reading here).
pub enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<VoxelBuffer>, std::ops::Range<usize>),
    Mapped(Arc<memmap2::Mmap>, std::ops::Range<usize>),
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Owned(bytes) => bytes,
            Chunk::Shared(data, range) => &data.bytes()[range.clone()],
            Chunk::Mapped(map, range) => &map[range.clone()],
        }
    }
}

thread_local! {
    /// A finished reply's buffer, kept for the thread's next reply. Converted and swapped
    /// ranges are built in a fresh buffer of up to 1 MiB per kernel read, which the daemon's
    /// allocator maps and unmaps each time (see `mount::return_large_buffers_at_once`); the
    /// kernel then zeroes and faults in 256 new pages per read. Measured with perf on header
    /// reads of new dirty versions: 17% of the daemon's time was that.
    static SPARE_REPLY: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest reply buffer kept per thread: a kernel read asks for at most 1 MiB here, and
/// bigger buffers (saving) are given back to the system at once.
const SPARE_REPLY_MAX: usize = 2 << 20;

/// An empty buffer for a reply of `len` bytes, the thread's spare one if there is one.
fn reply_buffer(len: usize) -> Vec<u8> {
    let mut out = SPARE_REPLY
        .try_with(|spare| spare.take())
        .unwrap_or_default();
    out.clear();
    out.reserve(len);
    out
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Chunk::Owned(out) = self
            && out.capacity() <= SPARE_REPLY_MAX
        {
            let out = std::mem::take(out);
            let _ = SPARE_REPLY.try_with(|spare| {
                let kept = spare.take();
                spare.set(if kept.capacity() >= out.capacity() {
                    kept
                } else {
                    out
                });
            });
        }
        if let Chunk::Mapped(map, range) = self {
            // The pages the kernel's copy mapped in are dropped again, so serving a file
            // never shows as daemon memory; the page cache keeps them.
            // SAFETY: a read-only shared file mapping refetches dropped pages on the next
            // access, and nothing here holds a reference into this range any more.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
    }
}

/// One image version as a single-file NIfTI.
#[derive(Debug)]
pub struct Rendering {
    prefix: Vec<u8>,
    data: DataObj,
    /// Bytes per voxel.
    unit: u64,
    /// The width of the units a byte-order swap reverses (a complex number's parts).
    swap_unit: usize,
    out_order: ByteOrder,
    data_len: u64,
}

/// The NIfTI version an image is served as: NIfTI-2 stays NIfTI-2, the rest become NIfTI-1.
pub fn served_flavor(image: &Image) -> Flavor {
    match image.header().flavor() {
        Flavor::Nifti2 => Flavor::Nifti2,
        _ => Flavor::Nifti1,
    }
}

impl Rendering {
    /// Snapshots an image. Cheap: the data are shared, not copied.
    pub fn of(image: &Image) -> Result<Rendering, String> {
        let header = image.header_as(served_flavor(image));
        let prefix = single_file_prefix(&header, image.extensions());
        let dtype = image.encoding().dtype;
        let voxels: u64 = image.shape().iter().product();
        let data = image.dataobj().clone();
        if let Some(why) = image.origin().and_then(|o| o.unreadable()) {
            return Err(why.to_string());
        }
        Ok(Rendering {
            prefix,
            data,
            unit: dtype.size() as u64,
            swap_unit: dtype.swap_width(),
            out_order: header.order(),
            data_len: voxels * dtype.size() as u64,
        })
    }

    /// The exact size of the file.
    pub fn size(&self) -> u64 {
        self.prefix.len() as u64 + self.data_len
    }

    /// The header, extensions and padding: everything before the data.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Bytes `[offset, offset + len)` of the file, shorter at its end. Data held in memory in
    /// the file's byte order are shared, not copied: a read of a converted image is then one
    /// copy, the kernel's.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Chunk> {
        let end = (offset + len as u64).min(self.size());
        if offset >= end {
            return Ok(Chunk::Owned(Vec::new()));
        }
        let plen = self.prefix.len() as u64;
        if let Some(file) = self.data.file_source()
            && offset >= plen
            && file.order == self.out_order
            && let Some(map) = file.mapping()
        {
            // The check comes before the kernel's copy here, not after it as with a read: a
            // change in that instant goes unnoticed, as with passthrough.
            file.check_unchanged()?;
            let a = (file.offset + offset - plen) as usize;
            let b = (file.offset + end - plen) as usize;
            if b <= map.len() {
                return Ok(Chunk::Mapped(map.clone(), a..b));
            }
        }
        if let Some(data) = self.data.in_memory()
            && offset >= plen
            && self.out_order == ByteOrder::native()
        {
            let range = (offset - plen) as usize..(end - plen) as usize;
            return Ok(Chunk::Shared(data.clone(), range));
        }
        let mut out = reply_buffer((end - offset) as usize);
        let plen = self.prefix.len() as u64;
        if offset < plen {
            out.extend_from_slice(&self.prefix[offset as usize..end.min(plen) as usize]);
        }
        if end > plen {
            let a = offset.max(plen) - plen;
            let b = end - plen;
            self.read_data(a, b, &mut out)?;
        }
        Ok(Chunk::Owned(out))
    }

    /// Appends data bytes `[a, b)` to `out`.
    fn read_data(&self, a: u64, b: u64, out: &mut Vec<u8>) -> io::Result<()> {
        // Whole elements around the range, so that a byte-order swap sees complete numbers;
        // read straight into the reply, with no copy in between.
        let e0 = a / self.unit;
        let e1 = b.div_ceil(self.unit);
        let skip = (a - e0 * self.unit) as usize;
        let start = out.len();
        out.resize(start + ((e1 - e0) * self.unit) as usize, 0);
        self.data.read_at(&mut out[start..], e0 * self.unit)?;
        if self.data.order() != self.out_order {
            swap_in_place(&mut out[start..], self.swap_unit);
        }
        out.truncate(start + skip + (b - a) as usize);
        out.drain(start..start + skip);
        Ok(())
    }

    /// Writes the data bytes (no header), for saving.
    pub fn write_data_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let chunk = (4 << 20) / self.unit * self.unit;
        let mut out = Vec::with_capacity(chunk as usize);
        let mut at = 0;
        while at < self.data_len {
            let b = (at + chunk).min(self.data_len);
            out.clear();
            self.read_data(at, b, &mut out)?;
            w.write_all(&out)?;
            at = b;
        }
        Ok(())
    }
}
