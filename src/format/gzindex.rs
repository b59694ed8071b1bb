//! Random access into a gzip-compressed original (`.nii.gz`), so that a byte range of the
//! decompressed image can be served without inflating the file from its start.
//!
//! This is the technique of zlib's `examples/zran.c` (and of `indexed_gzip`, which nibabel
//! uses): one forward pass records *access points*, each the compressed bit position of a
//! deflate block boundary, the output offset there and the 32 KiB of output before it (the
//! window a later block may refer back to). A read then inflates from the nearest point at or
//! before its offset. The pass is incremental: it runs only as far as a read needs, so reading
//! a header inflates a few KiB, not the image.
//!
//! Why `libz-rs-sys` (zlib-rs, pure Rust, zlib's C API): starting to inflate in the middle of a
//! byte needs zlib's `inflatePrime`, which neither flate2 nor zlib-rs's safe API expose; the C
//! API has it together with `inflateSetDictionary` and `Z_BLOCK` (stop at block boundaries).
//! zlib-rs needs no C toolchain and builds from the registry. Measured by
//! `scripts/bench_gzindex` on a 256 MiB int16 image written by nibabel (193 MB `.nii.gz`), one
//! run on the shared 2-core machine: `gzip -dc` 2.21 s, `pigz -dc` 1.71 s, zlib 1.2.13 (Python)
//! 1.52 s, flate2's miniz_oxide 1.12 s, this module's first pass (zlib-rs, with CRC32, windows
//! and segment copies) 1.20 s. zlib-ng was not measured (its crate needs cmake, not installed).
//! The few `unsafe` calls live in [`RawInflate`].
//!
//! What it guarantees:
//! - Every byte of the output has been passed once by the forward pass before any read returns
//!   it, and each member's CRC32 and ISIZE are checked when that pass completes the member. As
//!   in any streaming gunzip, bytes of a member can be served before its end is checked (or a
//!   header read would force a full pass); once a check fails, reads beyond it fail.
//! - Multi-member streams (concatenated files, bgzip) and all optional header fields (FEXTRA,
//!   FNAME, FCOMMENT, FHCRC) are read; zero padding after the last member is accepted.
//! - Memory is the index (points × at most 32 KiB) plus a least-recently-used cache of
//!   decompressed segments (the output between two points) bounded by a byte budget, plus the
//!   forward pass's current segment.
//! - Errors say what is wrong and where (output offset and compressed offset); they carry no
//!   file name, which the caller adds ([`GzError::for_file`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libz_rs_sys as z;
use parking_lot::{Mutex, RwLock};

use crate::format::FormatError;

/// The deflate window: the most output a block may refer back to.
pub const WINDOW: usize = 32 * 1024;
/// Default distance in output between access points.
pub const DEFAULT_SPAN: u64 = 2 << 20;
/// Smallest span accepted: a point's window must fit in the segment before it.
pub const MIN_SPAN: u64 = 64 * 1024;
/// Default byte budget of the decompressed-segment cache.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;
/// How much compressed input is read at once.
const IN_CHUNK: usize = 64 * 1024;
/// Most output inflated per step of the forward pass: small steps let a header read stop early.
const MAX_STEP: usize = 256 * 1024;
const MIN_STEP: usize = 4 * 1024;

/// Where compressed bytes come from: a file read by position, or memory (tests).
pub trait Source: Send + Sync {
    /// Fills `buf` from `offset` as far as the data goes; 0 means the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Source for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl Source for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = self.get(start..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// What went wrong reading a gzip stream, and where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GzError {
    #[error("gzip stream ends at byte {out} of the data (compressed offset {compressed})")]
    Truncated { out: u64, compressed: u64 },
    #[error("gzip stream is corrupt at compressed byte {compressed}: {detail}")]
    Corrupt { compressed: u64, detail: String },
    #[error(
        "gzip stream is corrupt: the member ending at compressed byte {compressed} fails its \
         check: {detail}"
    )]
    Check { compressed: u64, detail: String },
    #[error("cannot read the gzip data at compressed byte {compressed}: {cause}")]
    Io {
        compressed: u64,
        cause: Arc<io::Error>,
    },
    #[error("read at byte {offset} of the gzip data is beyond what can be addressed")]
    Range { offset: u64 },
}

impl GzError {
    /// The same problem as a [`FormatError`] naming the file.
    pub fn for_file(self, path: &Path) -> FormatError {
        match self {
            GzError::Io { cause, compressed } => FormatError::io(
                path,
                io::Error::new(
                    cause.kind(),
                    format!("reading the gzip data at compressed byte {compressed}: {cause}"),
                ),
            ),
            other => FormatError::invalid(path, other.to_string()),
        }
    }
}

/// Settings of a [`GzIndex`].
#[derive(Debug, Clone)]
pub struct GzOptions {
    /// Output bytes between access points (at least [`MIN_SPAN`]).
    pub span: u64,
    /// Byte budget of the decompressed-segment cache (0 disables it), when the index has a
    /// cache of its own.
    pub cache_bytes: u64,
    /// A cache shared with other indexes (a mount's), used instead of one of its own: one
    /// budget bounds them all.
    pub cache: Option<Arc<GzCache>>,
}

impl Default for GzOptions {
    fn default() -> Self {
        GzOptions {
            span: DEFAULT_SPAN,
            cache_bytes: DEFAULT_CACHE_BYTES,
            cache: None,
        }
    }
}

/// What the index holds and how it has been used, for tests and the status of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzStats {
    pub points: usize,
    /// Memory of the access points (windows and bookkeeping).
    pub index_bytes: usize,
    /// Output bytes the forward pass has produced and checked so far.
    pub built: u64,
    /// The length of the decompressed data, once the forward pass reached the end.
    pub len: Option<u64>,
    pub cache_bytes: u64,
    pub cache_entries: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Every byte inflated so far, by the forward pass and by reads from access points.
    pub inflated: u64,
}

/// A place the inflater can restart from.
#[derive(Debug)]
struct Point {
    /// Output offset of the first byte inflated from here.
    out: u64,
    /// Compressed offset of the first whole byte still to read.
    input: u64,
    /// Bits (0..=7) of the byte before `input` still to read.
    bits: u8,
    /// True at the start of a gzip member (`input` is its header; no window needed).
    header: bool,
    /// Output before `out` that the deflate stream may refer back to.
    window: Box<[u8]>,
}

impl Point {
    fn memory(&self) -> usize {
        std::mem::size_of::<Point>() + self.window.len() + std::mem::size_of::<Arc<Point>>()
    }
}

/// A raw-deflate inflater over zlib's C API (zlib-rs).
struct RawInflate {
    /// Boxed: zlib's state points back at the stream, which therefore must not move.
    strm: Box<z::z_stream>,
}

// SAFETY: the stream and the state it owns are only reached through `&mut self`; zlib-rs keeps
// no thread-local or thread-affine data in them, so moving the owner to another thread is sound.
unsafe impl Send for RawInflate {}

/// One call of `inflate`: its return code, input consumed, output produced, `data_type`.
struct Inflated {
    rc: i32,
    consumed: usize,
    produced: usize,
    data_type: i32,
}

impl RawInflate {
    fn new() -> Result<Self, String> {
        let mut strm = Box::new(z::z_stream::default());
        let size = std::ffi::c_int::try_from(std::mem::size_of::<z::z_stream>())
            .map_err(|_| "zlib stream too large".to_string())?;
        // SAFETY: `strm` is a valid stream whose allocator fields hold zlib-rs's defaults, it
        // is boxed so its address is stable for the state's back pointer, and the version
        // string is the library's own, NUL-terminated.
        let rc = unsafe { z::inflateInit2_(&mut *strm, -15, z::zlibVersion(), size) };
        if rc != z::Z_OK {
            return Err(format!("inflateInit2 returned {rc}"));
        }
        Ok(RawInflate { strm })
    }

    fn reset(&mut self) -> i32 {
        // SAFETY: the stream was initialised by `new` and not ended.
        unsafe { z::inflateReset(&mut *self.strm) }
    }

    fn prime(&mut self, bits: u8, value: u8) -> i32 {
        // SAFETY: as in `reset`; bits is at most 7, within inflatePrime's limit of 16.
        unsafe { z::inflatePrime(&mut *self.strm, i32::from(bits), i32::from(value)) }
    }

    fn set_dictionary(&mut self, dict: &[u8]) -> i32 {
        let Ok(len) = u32::try_from(dict.len()) else {
            return z::Z_STREAM_ERROR;
        };
        // SAFETY: as in `reset`; `dict` is valid for `len` bytes for the whole call and zlib
        // copies it into its window.
        unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), len) }
    }

    /// Inflates from `input` into `output`, stopping at the next block boundary (`Z_BLOCK`).
    fn inflate(&mut self, input: &[u8], output: &mut [u8]) -> Inflated {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = in_len as u32;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as u32;
        // SAFETY: next_in/avail_in and next_out/avail_out describe the two live slices, which
        // outlive the call; the pointers are cleared right after so none dangles.
        let rc = unsafe { z::inflate(&mut *self.strm, z::Z_BLOCK) };
        let consumed = in_len - self.strm.avail_in as usize;
        let produced = out_len - self.strm.avail_out as usize;
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        Inflated {
            rc,
            consumed,
            produced,
            data_type: self.strm.data_type,
        }
    }

    /// zlib's description of the last error.
    fn message(&self) -> String {
        if self.strm.msg.is_null() {
            return "invalid deflate data".to_string();
        }
        // SAFETY: a non-null `msg` points at one of zlib-rs's static NUL-terminated messages.
        let msg = unsafe { std::ffi::CStr::from_ptr(self.strm.msg) };
        msg.to_string_lossy().into_owned()
    }
}

impl Drop for RawInflate {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `new` and is ended exactly once, here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

/// Buffered compressed input read by position.
struct Input {
    src: Arc<dyn Source>,
    /// Compressed length as seen at open: a file that shrinks later reads as truncated.
    len: u64,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Compressed offset of `buf[start]`.
    pos: u64,
}

impl Input {
    fn new(src: Arc<dyn Source>, len: u64, pos: u64) -> Self {
        Input {
            src,
            len,
            buf: vec![0; IN_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            pos,
        }
    }

    /// Makes input available; false at the end of the data.
    fn fill(&mut self) -> Result<bool, GzError> {
        if self.start < self.end {
            return Ok(true);
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Ok(false);
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(IN_CHUNK);
        let n = loop {
            match self.src.read_at(&mut self.buf[..want], self.pos) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(GzError::Io {
                        compressed: self.pos,
                        cause: Arc::new(e),
                    });
                }
            }
        };
        self.start = 0;
        self.end = n.min(want);
        Ok(self.end > 0)
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.end - self.start);
        self.start += n;
        self.pos += n as u64;
    }

    fn byte(&mut self) -> Result<Option<u8>, GzError> {
        if !self.fill()? {
            return Ok(None);
        }
        let b = self.buf[self.start];
        self.consume(1);
        Ok(Some(b))
    }

    /// Moves to compressed offset `pos`, dropping what is buffered.
    fn seek(&mut self, pos: u64) {
        self.start = 0;
        self.end = 0;
        self.pos = pos;
    }
}

/// The forward pass's check of one member: CRC32 and length of its output.
struct MemberCheck {
    crc: crc32fast::Hasher,
    len: u64,
}

/// Inflates a gzip stream forward from an access point, across member boundaries.
struct Walker {
    input: Input,
    inf: RawInflate,
    /// Inside a member's deflate data (false: a header, padding or the end comes next).
    in_member: bool,
    /// Whether a member has been started (an empty file is not a gzip stream).
    seen_member: bool,
    eof: bool,
    /// Output offset of the next byte produced.
    out: u64,
    /// Output offset where the current member's data starts.
    member_out: u64,
    /// Set for the forward pass only: later readers rely on its checks.
    check: Option<MemberCheck>,
}

/// What one step of a [`Walker`] did.
struct Step {
    produced: usize,
    /// At a deflate block boundary inside a member: a place for an access point.
    boundary: bool,
    eof: bool,
}

impl Walker {
    fn start(
        src: Arc<dyn Source>,
        len: u64,
        point: &Point,
        checked: bool,
    ) -> Result<Self, GzError> {
        let corrupt = |detail: String| GzError::Corrupt {
            compressed: point.input,
            detail,
        };
        let mut inf = RawInflate::new().map_err(corrupt)?;
        let mut input = Input::new(src, len, point.input);
        if !point.header {
            if point.bits > 0 {
                let Some(prev) = point.input.checked_sub(1) else {
                    return Err(corrupt("access point before the data".into()));
                };
                input.seek(prev);
                let byte = input.byte()?.ok_or(GzError::Truncated {
                    out: point.out,
                    compressed: prev,
                })?;
                if inf.prime(point.bits, byte >> (8 - point.bits)) != z::Z_OK {
                    return Err(corrupt(
                        "cannot resume inflating at this access point".into(),
                    ));
                }
            }
            if inf.set_dictionary(&point.window) != z::Z_OK {
                return Err(corrupt("cannot set the window of this access point".into()));
            }
        }
        Ok(Walker {
            input,
            inf,
            in_member: !point.header,
            seen_member: point.input > 0,
            eof: false,
            out: point.out,
            member_out: point.out,
            check: checked.then(|| MemberCheck {
                crc: crc32fast::Hasher::new(),
                len: 0,
            }),
        })
    }

    fn truncated(&self) -> GzError {
        GzError::Truncated {
            out: self.out,
            compressed: self.input.pos,
        }
    }

    fn corrupt_here(&self, detail: impl Into<String>) -> GzError {
        GzError::Corrupt {
            compressed: self.input.pos,
            detail: detail.into(),
        }
    }

    fn need_byte(&mut self) -> Result<u8, GzError> {
        self.input.byte()?.ok_or_else(|| self.truncated())
    }

    /// Reads a member header, or notices the end of the stream (false).
    fn next_member(&mut self) -> Result<bool, GzError> {
        if !self.input.fill()? {
            if self.seen_member {
                return Ok(false);
            }
            return Err(self.truncated());
        }
        if self.seen_member && self.input.available()[0] == 0 {
            // zero padding after the last member, as tape and block writers leave it
            while let Some(b) = self.input.byte()? {
                if b != 0 {
                    return Err(GzError::Corrupt {
                        compressed: self.input.pos - 1,
                        detail: "non-zero data after the zero padding that ends the gzip stream"
                            .into(),
                    });
                }
            }
            return Ok(false);
        }
        let start = self.input.pos;
        let mut hcrc = crc32fast::Hasher::new();
        let take = |w: &mut Walker, hcrc: &mut crc32fast::Hasher, n: usize| {
            let mut b = [0u8; 10];
            for slot in b.iter_mut().take(n) {
                *slot = w.need_byte()?;
            }
            hcrc.update(&b[..n]);
            Ok::<_, GzError>(b)
        };
        let magic = take(self, &mut hcrc, 2)?;
        if magic[..2] != [0x1f, 0x8b] {
            return Err(GzError::Corrupt {
                compressed: start,
                detail: if self.seen_member {
                    "data after a gzip member is not another gzip member".into()
                } else {
                    "not gzip data (no 1f 8b magic)".into()
                },
            });
        }
        // method, flags, mtime, extra flags, OS
        let fixed = take(self, &mut hcrc, 8)?;
        if fixed[0] != 8 {
            return Err(GzError::Corrupt {
                compressed: start + 2,
                detail: format!("compression method {} is not deflate (8)", fixed[0]),
            });
        }
        let flags = fixed[1];
        if flags & 0xe0 != 0 {
            return Err(GzError::Corrupt {
                compressed: start + 3,
                detail: format!("reserved header flag bits set (flags {flags:#04x})"),
            });
        }
        if flags & 0x04 != 0 {
            let xlen = take(self, &mut hcrc, 2)?;
            let mut left = u16::from_le_bytes([xlen[0], xlen[1]]);
            while left > 0 {
                let n = left.min(10);
                take(self, &mut hcrc, usize::from(n))?;
                left -= n;
            }
        }
        for flag in [0x08u8, 0x10] {
            // FNAME, FCOMMENT: zero-terminated
            if flags & flag != 0 {
                while take(self, &mut hcrc, 1)?[0] != 0 {}
            }
        }
        if flags & 0x02 != 0 {
            let want = hcrc.clone().finalize() as u16;
            let got = take(self, &mut hcrc, 2)?;
            let got = u16::from_le_bytes([got[0], got[1]]);
            if got != want {
                return Err(GzError::Corrupt {
                    compressed: start,
                    detail: format!(
                        "header CRC16 is {got:#06x} but the header's bytes give {want:#06x}"
                    ),
                });
            }
        }
        if self.inf.reset() != z::Z_OK {
            return Err(self.corrupt_here("cannot restart the inflater"));
        }
        if let Some(check) = &mut self.check {
            check.crc = crc32fast::Hasher::new();
            check.len = 0;
        }
        self.in_member = true;
        self.seen_member = true;
        self.member_out = self.out;
        Ok(true)
    }

    /// Reads and checks a member's trailer after its deflate data ended.
    fn end_member(&mut self, data_type: i32) -> Result<(), GzError> {
        // whole bytes still in the inflater's bit buffer belong to the trailer
        let whole = u64::from((data_type & 63) as u8 / 8);
        if whole > 0 {
            self.input.seek(self.input.pos.saturating_sub(whole));
        }
        let mut t = [0u8; 8];
        for slot in &mut t {
            *slot = self.need_byte()?;
        }
        self.in_member = false;
        if let Some(check) = &mut self.check {
            let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
            let isize = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
            let got = std::mem::replace(&mut check.crc, crc32fast::Hasher::new()).finalize();
            if crc != got {
                return Err(GzError::Check {
                    compressed: self.input.pos,
                    detail: format!("stored CRC32 {crc:#010x}, data gives {got:#010x}"),
                });
            }
            if u64::from(isize) != check.len & 0xffff_ffff {
                return Err(GzError::Check {
                    compressed: self.input.pos,
                    detail: format!(
                        "stored length {isize} (mod 2^32), data has {} bytes",
                        check.len
                    ),
                });
            }
        }
        Ok(())
    }

    /// Inflates into `dst`, returning at the latest at the next block boundary.
    fn step(&mut self, dst: &mut [u8]) -> Result<Step, GzError> {
        loop {
            if self.eof {
                return Ok(Step {
                    produced: 0,
                    boundary: false,
                    eof: true,
                });
            }
            if !self.in_member {
                if !self.next_member()? {
                    self.eof = true;
                }
                continue;
            }
            let have = self.input.fill()?;
            let r = self.inf.inflate(self.input.available(), dst);
            self.input.consume(r.consumed);
            self.out = self
                .out
                .checked_add(r.produced as u64)
                .ok_or(GzError::Range { offset: self.out })?;
            if let Some(check) = &mut self.check {
                check.crc.update(&dst[..r.produced]);
                check.len += r.produced as u64;
            }
            match r.rc {
                z::Z_STREAM_END => {
                    self.end_member(r.data_type)?;
                    return Ok(Step {
                        produced: r.produced,
                        boundary: false,
                        eof: false,
                    });
                }
                z::Z_OK | z::Z_BUF_ERROR => {
                    if r.produced == 0 && r.consumed == 0 {
                        if !have {
                            return Err(self.truncated());
                        }
                        if dst.is_empty() {
                            return Ok(Step {
                                produced: 0,
                                boundary: false,
                                eof: false,
                            });
                        }
                    }
                    let boundary = r.data_type & 128 != 0 && r.data_type & 64 == 0;
                    if r.produced > 0 || boundary {
                        return Ok(Step {
                            produced: r.produced,
                            boundary,
                            eof: false,
                        });
                    }
                }
                z::Z_DATA_ERROR => return Err(self.corrupt_here(self.inf.message())),
                z::Z_MEM_ERROR => return Err(self.corrupt_here("inflate ran out of memory")),
                rc => return Err(self.corrupt_here(format!("inflate returned code {rc}"))),
            }
        }
    }

    /// The access point for the current position (call only at a boundary or a header).
    fn point_here(&self, data_type: i32, window: &[u8]) -> Point {
        // position of the next unread bit: bits still in the inflater belong to it
        let held = u64::from((data_type & 63) as u8);
        let bit = (self.input.pos * 8).saturating_sub(held);
        let (input, bits) = if bit % 8 == 0 {
            (bit / 8, 0)
        } else {
            (bit / 8 + 1, 8 - (bit % 8) as u8)
        };
        Point {
            out: self.out,
            input,
            bits,
            header: false,
            window: window.into(),
        }
    }
}

/// The forward pass, paused between reads.
struct Builder {
    walker: Walker,
    /// Output from `seg_base` up to the walker's position.
    seg: Vec<u8>,
    seg_base: u64,
    /// False once `seg` lost its head (a segment too long to keep whole).
    seg_whole: bool,
    error: Option<GzError>,
    done: bool,
}

/// Index, cache and readers' shared view of how far the forward pass got.
struct Shared {
    points: Vec<Arc<Point>>,
    index_bytes: usize,
    built: u64,
    len: Option<u64>,
}

/// Least-recently-used decompressed segments of one or more indexes under one byte budget,
/// keyed by the index's id and the number of the segment's first point.
pub struct GzCache(Mutex<Cache>);

impl GzCache {
    pub fn new(budget: u64) -> GzCache {
        GzCache(Mutex::new(Cache {
            budget,
            bytes: 0,
            tick: 0,
            entries: HashMap::new(),
        }))
    }

    /// Bytes held now, over every index.
    pub fn bytes(&self) -> u64 {
        self.0.lock().bytes
    }

    pub fn budget(&self) -> u64 {
        self.0.lock().budget
    }
}

impl std::fmt::Debug for GzCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0.lock();
        f.debug_struct("GzCache")
            .field("budget", &c.budget)
            .field("bytes", &c.bytes)
            .finish()
    }
}

type SegKey = (u64, usize);

struct Cache {
    budget: u64,
    bytes: u64,
    tick: u64,
    entries: HashMap<SegKey, (Arc<[u8]>, u64)>,
}

/// Gives each index its own key space in a shared cache.
static NEXT_INDEX_ID: AtomicU64 = AtomicU64::new(0);

impl Cache {
    fn get(&mut self, seg: SegKey) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&seg).map(|(data, used)| {
            *used = tick;
            data.clone()
        })
    }

    fn insert(&mut self, seg: SegKey, data: Arc<[u8]>) {
        let len = data.len() as u64;
        if len > self.budget || self.entries.contains_key(&seg) {
            return;
        }
        while self.bytes + len > self.budget {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, (_, used))| *used) else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.len() as u64;
            }
        }
        self.tick += 1;
        self.bytes += len;
        self.entries.insert(seg, (data, self.tick));
    }
}

/// Random access to the decompressed bytes of a gzip stream (see the module doc).
pub struct GzIndex {
    src: Arc<dyn Source>,
    src_len: u64,
    span: u64,
    shared: RwLock<Shared>,
    builder: Mutex<Builder>,
    cache: Arc<GzCache>,
    id: u64,
    /// Segments being inflated into the cache now: a second reader of one waits for it
    /// instead of inflating it again.
    inflight: Mutex<std::collections::HashSet<usize>>,
    inflated_one: parking_lot::Condvar,
    hits: AtomicU64,
    misses: AtomicU64,
    inflated: AtomicU64,
}

impl Drop for GzIndex {
    /// Its segments leave a shared cache with it.
    fn drop(&mut self) {
        let mut c = self.cache.0.lock();
        let mut freed = 0;
        c.entries.retain(|(id, _), (data, _)| {
            let keep = *id != self.id;
            if !keep {
                freed += data.len() as u64;
            }
            keep
        });
        c.bytes -= freed;
    }
}

impl std::fmt::Debug for GzIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzIndex")
            .field("src_len", &self.src_len)
            .field("stats", &self.stats())
            .finish()
    }
}

impl GzIndex {
    /// Opens a gzip file with the default options; nothing is inflated yet.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        Self::new(Arc::new(file), GzOptions::default()).map_err(|e| e.for_file(path))
    }

    /// An index over any source; nothing is inflated yet.
    pub fn new(src: Arc<dyn Source>, options: GzOptions) -> Result<Self, GzError> {
        let src_len = src.len().map_err(|e| GzError::Io {
            compressed: 0,
            cause: Arc::new(e),
        })?;
        let first = Point {
            out: 0,
            input: 0,
            bits: 0,
            header: true,
            window: Box::new([]),
        };
        let walker = Walker::start(src.clone(), src_len, &first, true)?;
        let index_bytes = first.memory();
        Ok(GzIndex {
            src,
            src_len,
            span: options.span.max(MIN_SPAN),
            shared: RwLock::new(Shared {
                points: vec![Arc::new(first)],
                index_bytes,
                built: 0,
                len: None,
            }),
            builder: Mutex::new(Builder {
                walker,
                seg: Vec::new(),
                seg_base: 0,
                seg_whole: true,
                error: None,
                done: false,
            }),
            cache: options
                .cache
                .unwrap_or_else(|| Arc::new(GzCache::new(options.cache_bytes))),
            id: NEXT_INDEX_ID.fetch_add(1, Ordering::Relaxed),
            inflight: Mutex::new(std::collections::HashSet::new()),
            inflated_one: parking_lot::Condvar::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inflated: AtomicU64::new(0),
        })
    }

    /// The decompressed length, once the forward pass has reached the end.
    pub fn len_if_known(&self) -> Option<u64> {
        self.shared.read().len
    }

    /// Runs the forward pass to the end and returns the decompressed length.
    pub fn build_all(&self) -> Result<u64, GzError> {
        self.build_to(u64::MAX)?;
        self.len_if_known()
            .ok_or(GzError::Range { offset: u64::MAX })
    }

    /// Runs the forward pass until at least `offset` bytes of output are indexed and checked
    /// (or the stream ends first). Returns how far it got.
    pub fn build_to(&self, offset: u64) -> Result<u64, GzError> {
        {
            let shared = self.shared.read();
            if shared.built >= offset || shared.len.is_some() {
                return Ok(shared.built);
            }
        }
        let mut b = self.builder.lock();
        if let Some(e) = &b.error {
            return Err(e.clone());
        }
        while !b.done && b.walker.out < offset {
            if let Err(e) = self.build_step(&mut b, offset) {
                b.error = Some(e.clone());
                return Err(e);
            }
        }
        Ok(b.walker.out)
    }

    fn build_step(&self, b: &mut Builder, target: u64) -> Result<(), GzError> {
        if !b.walker.in_member
            && b.walker.input.pos < self.src_len
            && b.walker.out - self.point_out_last() >= self.span
        {
            // a member starts here: a point that needs no window
            let point = Point {
                out: b.walker.out,
                input: b.walker.input.pos,
                bits: 0,
                header: true,
                window: Box::new([]),
            };
            self.add_point(b, point);
        }
        let want = usize::try_from(target.saturating_sub(b.walker.out))
            .unwrap_or(usize::MAX)
            .clamp(MIN_STEP, MAX_STEP);
        let start = b.seg.len();
        b.seg.resize(start + want, 0);
        let Builder { walker, seg, .. } = b;
        let step = walker.step(&mut seg[start..]);
        b.seg
            .truncate(start + step.as_ref().map_or(0, |s| s.produced));
        let step = step?;
        self.inflated
            .fetch_add(step.produced as u64, Ordering::Relaxed);
        if step.eof {
            b.done = true;
            let total = b.walker.out;
            self.finish_segment(b);
            b.seg = Vec::new();
            b.seg_whole = false;
            let mut shared = self.shared.write();
            shared.built = total;
            shared.len = Some(total);
            return Ok(());
        }
        if step.boundary && b.walker.out - self.point_out_last() >= self.span {
            let in_member = b.walker.out - b.walker.member_out;
            let keep = (WINDOW as u64).min(in_member).min(b.seg.len() as u64) as usize;
            let window = &b.seg[b.seg.len() - keep..];
            let point = b.walker.point_here(b.walker.inf.strm.data_type, window);
            self.add_point(b, point);
        } else if b.seg.len() as u64 > self.span.saturating_mul(4) {
            // no block boundary for a long way: keep only the window, reads re-inflate
            let drop = b.seg.len() - WINDOW;
            b.seg.drain(..drop);
            b.seg_base += drop as u64;
            b.seg_whole = false;
        }
        self.shared.write().built = b.walker.out;
        Ok(())
    }

    fn point_out_last(&self) -> u64 {
        self.shared.read().points.last().map_or(0, |p| p.out)
    }

    /// Ends the builder's current segment at a new point and starts the next.
    fn add_point(&self, b: &mut Builder, point: Point) {
        self.finish_segment(b);
        b.seg.clear();
        b.seg_base = point.out;
        b.seg_whole = true;
        let mut shared = self.shared.write();
        shared.index_bytes += point.memory();
        shared.built = point.out;
        shared.points.push(Arc::new(point));
    }

    /// Hands the builder's completed segment to the cache.
    fn finish_segment(&self, b: &mut Builder) {
        if !b.seg_whole || b.seg.is_empty() {
            return;
        }
        let index = self.shared.read().points.len() - 1;
        let data: Arc<[u8]> = b.seg.as_slice().into();
        self.cache.0.lock().insert((self.id, index), data);
    }

    /// Reads decompressed bytes at `offset` into `buf`; fewer than `buf.len()` only at the end
    /// of the data. Safe to call from several threads at once.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, GzError> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset
                .checked_add(done as u64)
                .ok_or(GzError::Range { offset })?;
            let n = self.read_some(&mut buf[done..], pos)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn read_some(&self, buf: &mut [u8], pos: u64) -> Result<usize, GzError> {
        let end = pos.saturating_add(buf.len() as u64);
        let built = self.build_to(end)?;
        if pos >= built {
            return Ok(0);
        }
        let (index, point, seg_end) = {
            let shared = self.shared.read();
            let i = shared
                .points
                .partition_point(|p| p.out <= pos)
                .saturating_sub(1);
            let seg_end = shared.points.get(i + 1).map(|p| p.out).or(shared.len);
            (i, shared.points[i].clone(), seg_end)
        };
        let copy = |data: &[u8], base: u64, buf: &mut [u8]| -> usize {
            let from = (pos - base) as usize;
            let n = buf.len().min(data.len() - from);
            buf[..n].copy_from_slice(&data[from..from + n]);
            n
        };
        if let Some(data) = self.cache.0.lock().get((self.id, index)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(copy(&data, point.out, buf));
        }
        if seg_end.is_none() {
            let b = self.builder.lock();
            let seg_end = b.seg_base + b.seg.len() as u64;
            if b.seg_base <= pos && pos < seg_end {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(copy(&b.seg, b.seg_base, buf));
            }
        }
        let limit = seg_end.unwrap_or(built).min(built);
        let whole_len = limit - point.out;
        if seg_end.is_some() && whole_len <= self.cache.budget() {
            let data = self.segment(index, &point, whole_len)?;
            return Ok(copy(&data, point.out, buf));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let n = buf.len().min((limit - pos) as usize);
        self.inflate_from(&point, pos, &mut buf[..n])?;
        Ok(n)
    }

    /// The whole completed segment `index` (`len` bytes from `point`), from the cache or
    /// inflated into it; if another thread is inflating it, waits for that one.
    fn segment(&self, index: usize, point: &Point, len: u64) -> Result<Arc<[u8]>, GzError> {
        {
            let mut inflight = self.inflight.lock();
            loop {
                if let Some(data) = self.cache.0.lock().get((self.id, index)) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(data);
                }
                if inflight.insert(index) {
                    break;
                }
                self.inflated_one.wait(&mut inflight);
            }
        }
        // Whatever happens from here, a panic included (the FUSE adapter catches it and serves
        // on), the claim is given back: the waiters then inflate the segment themselves
        // instead of waiting for ever.
        let _claim = InflightClaim {
            index: self,
            segment: index,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut data = vec![0; len as usize];
        let result = self.inflate_from(point, point.out, &mut data);
        let data: Arc<[u8]> = data.into();
        if result.is_ok() {
            self.cache.0.lock().insert((self.id, index), data.clone());
        }
        result.map(|()| data)
    }

    /// Inflates the completed segment holding output byte `offset` into the cache, unless it
    /// is there or on its way (for decompressing ahead of a sequential reader on another
    /// core). Returns false if there is no such segment yet or it does not fit the cache.
    pub fn prefetch(&self, offset: u64) -> Result<bool, GzError> {
        let (index, point, seg_end) = {
            let shared = self.shared.read();
            if offset >= shared.built {
                return Ok(false);
            }
            let i = shared
                .points
                .partition_point(|p| p.out <= offset)
                .saturating_sub(1);
            let seg_end = shared.points.get(i + 1).map(|p| p.out).or(shared.len);
            (i, shared.points[i].clone(), seg_end)
        };
        let Some(seg_end) = seg_end else {
            return Ok(false);
        };
        let len = seg_end - point.out;
        if len > self.cache.budget() || self.inflight.lock().contains(&index) {
            return Ok(false);
        }
        self.segment(index, &point, len).map(|_| true)
    }

    /// The output bytes between access points.
    pub fn span(&self) -> u64 {
        self.span
    }

    /// Inflates from `point` and fills `dst` with the output at `from`.
    fn inflate_from(&self, point: &Point, from: u64, dst: &mut [u8]) -> Result<(), GzError> {
        let mut w = Walker::start(self.src.clone(), self.src_len, point, false)?;
        let mut scratch = Vec::new();
        let end = from.saturating_add(dst.len() as u64);
        while w.out < end {
            // output before `from` goes to scratch, never more than reaches `from`
            let step = if w.out < from {
                let skip = usize::try_from(from - w.out)
                    .unwrap_or(usize::MAX)
                    .min(MAX_STEP);
                scratch.resize(skip, 0);
                w.step(&mut scratch)?
            } else {
                let at = (w.out - from) as usize;
                w.step(&mut dst[at..])?
            };
            self.inflated
                .fetch_add(step.produced as u64, Ordering::Relaxed);
            if step.eof {
                return Err(w.truncated());
            }
        }
        Ok(())
    }

    /// What the index holds and how it has been used.
    pub fn stats(&self) -> GzStats {
        let (points, index_bytes, built, len) = {
            let s = self.shared.read();
            (s.points.len(), s.index_bytes, s.built, s.len)
        };
        let (cache_bytes, cache_entries) = {
            let c = self.cache.0.lock();
            c.entries
                .iter()
                .filter(|((id, _), _)| *id == self.id)
                .fold((0, 0), |(b, n), (_, (data, _))| {
                    (b + data.len() as u64, n + 1)
                })
        };
        GzStats {
            points,
            index_bytes,
            built,
            len,
            cache_bytes,
            cache_entries,
            cache_hits: self.hits.load(Ordering::Relaxed),
            cache_misses: self.misses.load(Ordering::Relaxed),
            inflated: self.inflated.load(Ordering::Relaxed),
        }
    }
}

/// A thread's claim to inflate one segment, given back when dropped.
struct InflightClaim<'a> {
    index: &'a GzIndex,
    segment: usize,
}

impl Drop for InflightClaim<'_> {
    fn drop(&mut self) {
        self.index.inflight.lock().remove(&self.segment);
        self.index.inflated_one.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder};
    use proptest::prelude::*;
    use std::io::Write;

    /// Header fields a test member carries.
    #[derive(Debug, Clone, Copy, Default)]
    struct Fields {
        extra: bool,
        name: bool,
        comment: bool,
        hcrc: bool,
    }

    /// One gzip member written field by field, so every optional header field is exercised.
    fn member(data: &[u8], level: u32, f: Fields) -> Vec<u8> {
        let flags = u8::from(f.hcrc) << 1
            | u8::from(f.extra) << 2
            | u8::from(f.name) << 3
            | u8::from(f.comment) << 4;
        let mut out = vec![0x1f, 0x8b, 8, flags, 1, 2, 3, 4, 0, 3];
        if f.extra {
            // bgzip's BC subfield: block size minus one (any value serves the test)
            out.extend_from_slice(&[6, 0, b'B', b'C', 2, 0, 0x12, 0x34]);
        }
        if f.name {
            out.extend_from_slice(b"image.nii\0");
        }
        if f.comment {
            out.extend_from_slice(b"a comment\0");
        }
        if f.hcrc {
            let crc = crc32fast::hash(&out) as u16;
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let mut enc = DeflateEncoder::new(out, Compression::new(level));
        enc.write_all(data).unwrap();
        let mut out = enc.finish().unwrap();
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// Smooth int16 samples with noise, as in an image: compressible but not trivially.
    fn image_like(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut value: i32 = 1000;
        let mut out = Vec::with_capacity(len + 1);
        while out.len() < len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((state >> 33) % 21) as i32 - 10;
            value = (value + noise).clamp(-3000, 3000);
            out.extend_from_slice(&(value as i16).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn indexes_sharing_a_cache_stay_within_one_budget_and_free_it_when_dropped() {
        let shared = Arc::new(GzCache::new(3 * MIN_SPAN));
        let open = |data: &[u8]| {
            let options = GzOptions {
                span: MIN_SPAN,
                cache_bytes: 0,
                cache: Some(shared.clone()),
            };
            GzIndex::new(Arc::new(member(data, 6, Fields::default())), options).unwrap()
        };
        let (a_data, b_data) = (image_like(600_000, 1), image_like(600_000, 2));
        let (a, b) = (open(&a_data), open(&b_data));
        for (idx, data) in [(&a, &a_data), (&b, &b_data)] {
            idx.build_all().unwrap();
            for at in (0..data.len()).step_by(100_000) {
                let mut buf = [0u8; 1000];
                let n = idx.read_at(&mut buf, at as u64).unwrap();
                assert_eq!(&buf[..n], &data[at..at + n]);
            }
            assert!(shared.bytes() <= 3 * MIN_SPAN, "{}", shared.bytes());
        }
        let held_by_b = b.stats().cache_bytes;
        assert!(held_by_b > 0);
        drop(b);
        assert_eq!(shared.bytes(), a.stats().cache_bytes);
    }

    #[test]
    fn prefetch_fills_the_cache_and_the_read_then_hits() {
        let data = image_like(700_000, 3);
        // room for the last segments of the forward pass only: the one at 400 000 is evicted
        let idx = index(member(&data, 6, Fields::default()), MIN_SPAN, 3 * MIN_SPAN);
        idx.build_all().unwrap();
        let built = idx.stats();
        assert!(idx.prefetch(400_000).unwrap());
        let before = idx.stats();
        assert!(
            before.inflated > built.inflated,
            "the prefetch inflated the segment"
        );
        let mut buf = [0u8; 100];
        idx.read_at(&mut buf, 400_000).unwrap();
        assert_eq!(&buf[..], &data[400_000..400_100]);
        let after = idx.stats();
        assert_eq!(after.inflated, before.inflated, "nothing inflated again");
        assert_eq!(after.cache_hits, before.cache_hits + 1);
    }

    fn index(bytes: Vec<u8>, span: u64, cache_bytes: u64) -> GzIndex {
        GzIndex::new(
            Arc::new(bytes),
            GzOptions {
                span,
                cache_bytes,
                cache: None,
            },
        )
        .unwrap()
    }

    /// Concatenates members of `data` split at `cuts` (fractions of the length).
    fn members(data: &[u8], level: u32, cuts: &[f64], f: Fields) -> Vec<u8> {
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|c| (c * data.len() as f64) as usize)
            .collect();
        at.push(0);
        at.push(data.len());
        at.sort();
        at.windows(2)
            .flat_map(|w| member(&data[w[0]..w[1]], level, f))
            .collect()
    }

    fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0usize..300_000, any::<u64>()).prop_map(|(n, s)| image_like(n, s)),
            proptest::collection::vec(any::<u8>(), 0..100_000),
            (0usize..400_000).prop_map(|n| vec![7u8; n]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_range_equals_the_slice_of_the_whole(
            data in data_strategy(),
            level in 0u32..=9,
            cuts in proptest::collection::vec(0.0f64..1.0, 0..4),
            fields in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
            cache in prop_oneof![Just(0u64), Just(100_000), Just(10 << 20)],
            ranges in proptest::collection::vec((0.0f64..1.1, 0usize..200_000), 1..12),
        ) {
            let f = Fields { extra: fields.0, name: fields.1, comment: fields.2, hcrc: fields.3 };
            let gz = members(&data, level, &cuts, f);
            let idx = index(gz, MIN_SPAN, cache);
            for (start, len) in ranges {
                let start = (start * data.len() as f64) as u64;
                let mut buf = vec![0xaa; len];
                let n = idx.read_at(&mut buf, start).unwrap();
                let s = (start as usize).min(data.len());
                let want = &data[s..(s + len).min(data.len())];
                prop_assert_eq!(n, want.len());
                prop_assert!(buf[..n] == *want);
            }
            prop_assert_eq!(idx.build_all().unwrap(), data.len() as u64);
            let mut all = vec![0; data.len() + 10];
            prop_assert_eq!(idx.read_at(&mut all, 0).unwrap(), data.len());
            prop_assert!(all[..data.len()] == data[..]);
            prop_assert!(idx.stats().cache_bytes <= cache);
        }
    }

    #[test]
    fn reads_what_gzip_and_flate2_write() {
        let data = image_like(1 << 20, 3);
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&data).unwrap();
        let idx = index(enc.finish().unwrap(), MIN_SPAN, 0);
        let mut buf = vec![0; 5000];
        assert_eq!(idx.read_at(&mut buf, 700_001).unwrap(), 5000);
        assert_eq!(buf, data[700_001..705_001]);
        assert_eq!(
            idx.len_if_known(),
            None,
            "a read in the middle builds only to it"
        );
        assert_eq!(idx.build_all().unwrap(), data.len() as u64);
    }

    #[test]
    fn reads_a_file_written_by_gzip_and_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("img.nii");
        let data = image_like(300_000, 12);
        std::fs::write(&plain, &data).unwrap();
        // gzip stores the file name (FNAME) and the mtime in the header
        let status = std::process::Command::new("gzip")
            .arg("-9")
            .arg(&plain)
            .status()
            .unwrap();
        assert!(status.success());
        let path = dir.path().join("img.nii.gz");
        let idx = GzIndex::open(&path).unwrap();
        let mut buf = vec![0; 1000];
        assert_eq!(idx.read_at(&mut buf, 123_457).unwrap(), 1000);
        assert!(buf[..] == data[123_457..124_457]);
        assert_eq!(idx.build_all().unwrap(), data.len() as u64);

        let mut cut = std::fs::read(&path).unwrap();
        cut.truncate(cut.len() - 5);
        let bad = dir.path().join("cut.nii.gz");
        std::fs::write(&bad, &cut).unwrap();
        let err = GzIndex::open(&bad).unwrap().build_all().unwrap_err();
        let msg = err.for_file(&bad).to_string();
        assert_eq!(
            msg,
            format!(
                "{}: gzip stream ends at byte {} of the data (compressed offset {})",
                bad.display(),
                data.len(),
                cut.len()
            )
        );
    }

    #[test]
    fn a_header_read_inflates_a_few_kib_not_the_image() {
        let data = image_like(8 << 20, 5);
        let idx = index(
            member(&data, 6, Fields::default()),
            DEFAULT_SPAN,
            DEFAULT_CACHE_BYTES,
        );
        let mut hdr = [0u8; 352];
        assert_eq!(idx.read_at(&mut hdr, 0).unwrap(), 352);
        assert_eq!(hdr[..], data[..352]);
        let stats = idx.stats();
        assert!(stats.inflated <= 64 * 1024, "{stats:?}");
        assert_eq!(stats.points, 1);
        assert_eq!(stats.len, None);
    }

    #[test]
    fn a_sequential_reader_inflates_each_byte_once() {
        let data = image_like(16 << 20, 9);
        let gz = members(&data, 6, &[0.3], Fields::default());
        let idx = index(gz, 1 << 20, 4 << 20);
        let mut got = Vec::new();
        let mut buf = vec![0; 128 * 1024];
        loop {
            let n = idx.read_at(&mut buf, got.len() as u64).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == data);
        let stats = idx.stats();
        assert_eq!(stats.inflated, data.len() as u64, "{stats:?}");
        // a second pass re-inflates only what the cache could not hold
        got.clear();
        while got.len() < data.len() {
            let n = idx.read_at(&mut buf, got.len() as u64).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == data);
        let again = idx.stats().inflated - stats.inflated;
        assert!(again <= data.len() as u64 + (2 << 20), "{again}");
        assert!(idx.stats().cache_bytes <= 4 << 20);
    }

    #[test]
    fn index_memory_is_points_times_the_window() {
        let data = image_like(8 << 20, 11);
        let idx = index(member(&data, 6, Fields::default()), 256 * 1024, 0);
        idx.build_all().unwrap();
        let s = idx.stats();
        // a point every span of output, each holding at most a 32 KiB window
        assert!((24..=33).contains(&s.points), "{s:?}");
        assert!(s.index_bytes <= s.points * (WINDOW + 256), "{s:?}");
        assert!(s.index_bytes >= (s.points - 1) * WINDOW, "{s:?}");
        assert_eq!(s.cache_bytes, 0);
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let data = image_like(6 << 20, 13);
        let idx = index(member(&data, 1, Fields::default()), MIN_SPAN, 300_000);
        let mut buf = vec![0; 50_000];
        let mut state = 17u64;
        for _ in 0..200 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let at = (state >> 20) % data.len() as u64;
            let n = idx.read_at(&mut buf, at).unwrap();
            assert!(buf[..n] == data[at as usize..at as usize + n]);
            let s = idx.stats();
            assert!(s.cache_bytes <= 300_000, "{s:?}");
        }
        assert!(idx.stats().cache_hits > 0);
    }

    #[test]
    fn concurrent_readers_see_the_same_bytes() {
        let data = Arc::new(image_like(4 << 20, 21));
        let idx = Arc::new(index(
            members(&data, 6, &[0.5], Fields::default()),
            MIN_SPAN,
            1 << 20,
        ));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (idx, data) = (idx.clone(), data.clone());
                std::thread::spawn(move || {
                    let mut state = t + 1;
                    let mut buf = vec![0; 70_000];
                    for _ in 0..60 {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(t);
                        let at = (state >> 20) % data.len() as u64;
                        let n = idx.read_at(&mut buf, at).unwrap();
                        assert!(buf[..n] == data[at as usize..at as usize + n]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn header_fields_are_read_and_a_bad_header_crc_is_named() {
        let data = image_like(100_000, 1);
        let all = Fields {
            extra: true,
            name: true,
            comment: true,
            hcrc: true,
        };
        let idx = index(member(&data, 9, all), MIN_SPAN, 0);
        let mut buf = vec![0; data.len()];
        assert_eq!(idx.read_at(&mut buf, 0).unwrap(), data.len());
        assert!(buf == data);

        let mut gz = member(&data, 9, all);
        gz[4] ^= 1; // MTIME changes, the header CRC no longer matches
        let err = index(gz, MIN_SPAN, 0).build_all().unwrap_err();
        assert!(err.to_string().contains("header CRC16"), "{err}");
    }

    #[test]
    fn a_bad_trailer_is_a_check_error_naming_the_member_end() {
        let data = image_like(50_000, 2);
        let mut gz = member(&data, 6, Fields::default());
        let n = gz.len();
        gz[n - 8] ^= 0x40;
        let err = index(gz.clone(), MIN_SPAN, 0).build_all().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "gzip stream is corrupt: the member ending at compressed byte {n} fails its check: stored CRC32 {:#010x}, data gives {:#010x}",
                crc32fast::hash(&data) ^ 0x40,
                crc32fast::hash(&data)
            )
        );
        gz[n - 8] ^= 0x40;
        gz[n - 1] ^= 1;
        let err = index(gz, MIN_SPAN, 0).build_all().unwrap_err();
        assert!(err.to_string().contains("stored length"), "{err}");
    }

    #[test]
    fn what_is_not_gzip_is_named() {
        let err = index(b"plain bytes".to_vec(), MIN_SPAN, 0)
            .build_all()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "gzip stream is corrupt at compressed byte 0: not gzip data (no 1f 8b magic)"
        );
        let err = index(Vec::new(), MIN_SPAN, 0).build_all().unwrap_err();
        assert_eq!(
            err.to_string(),
            "gzip stream ends at byte 0 of the data (compressed offset 0)"
        );

        let data = image_like(1000, 4);
        let mut gz = member(&data, 6, Fields::default());
        gz.extend_from_slice(&[0; 100]);
        assert_eq!(
            index(gz.clone(), MIN_SPAN, 0).build_all().unwrap(),
            1000,
            "zero padding ends it"
        );
        let end = gz.len() - 100;
        gz.truncate(end);
        gz.extend_from_slice(b"junk");
        let err = index(gz, MIN_SPAN, 0).build_all().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "gzip stream is corrupt at compressed byte {end}: data after a gzip member is not another gzip member"
            )
        );
    }

    /// Output lengths at which a cut stream is still a whole, shorter stream.
    fn member_ends(parts: &[usize]) -> Vec<u64> {
        parts
            .iter()
            .scan(0u64, |acc, p| {
                *acc += *p as u64;
                Some(*acc)
            })
            .collect()
    }

    #[test]
    fn truncation_anywhere_is_explained_never_wrong_bytes() {
        let data = image_like(40_000, 6);
        let gz = members(
            &data,
            6,
            &[0.4],
            Fields {
                name: true,
                ..Fields::default()
            },
        );
        let ends = member_ends(&[16_000, 24_000]);
        for cut in (0..gz.len()).step_by(16) {
            let idx = index(gz[..cut].to_vec(), MIN_SPAN, 0);
            let mut buf = vec![0; data.len()];
            match idx.read_at(&mut buf, 0) {
                Ok(n) => {
                    assert!(
                        ends.contains(&(n as u64)) || n == 0 && cut == 0,
                        "cut {cut}: {n}"
                    );
                    assert!(buf[..n] == data[..n]);
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with("gzip stream ends at byte "),
                        "cut {cut}: {msg}"
                    );
                    assert!(
                        msg.ends_with(&format!("(compressed offset {cut})")),
                        "cut {cut}: {msg}"
                    );
                }
            }
            // what was built before the end reads back right
            let built = idx.stats().built as usize;
            let mut part = vec![0; built];
            if let Ok(n) = idx.read_at(&mut part, 0) {
                assert!(part[..n] == data[..n]);
            }
        }
    }

    #[test]
    fn corrupt_bytes_give_an_error_or_the_right_bytes() {
        let data = image_like(12_000, 8);
        let gz = members(
            &data,
            6,
            &[0.5],
            Fields {
                hcrc: true,
                ..Fields::default()
            },
        );
        for at in 0..gz.len() {
            let flips: &[u8] = if at % 7 == 0 {
                &[0x01, 0x80, 0xff]
            } else {
                &[0x80]
            };
            for &flip in flips {
                let mut bad = gz.clone();
                bad[at] ^= flip;
                let idx = index(bad, MIN_SPAN, 0);
                let mut buf = vec![0; data.len() + 1];
                match idx.read_at(&mut buf, 0) {
                    Ok(n) if n == data.len() && buf[..n] == data[..] => {}
                    // bytes served before their member's end is checked: the check fails
                    Ok(_) => {
                        let err = idx.build_all().unwrap_err().to_string();
                        assert!(err.starts_with("gzip "), "byte {at} flip {flip}: {err}");
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        assert!(msg.starts_with("gzip "), "byte {at} flip {flip}: {msg}");
                    }
                }
            }
        }
    }
}
