//! Changing an image's data type: the scaling nibabel's array writers would choose, and the
//! element-by-element conversion that the renderer applies to any byte range.

use crate::format::{ByteOrder, DataType};

/// How stored numbers map to the values a reader sees: `value = stored * slope + inter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Encoding {
    pub dtype: DataType,
    pub scaling: Option<(f64, f64)>,
}

/// The finite range of an image's values, and whether any value is NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueRange {
    pub min: f64,
    pub max: f64,
    pub any_finite: bool,
    pub has_nan: bool,
}

impl Default for ValueRange {
    fn default() -> Self {
        ValueRange {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            any_finite: false,
            has_nan: false,
        }
    }
}

impl ValueRange {
    #[cfg(test)]
    fn add(&mut self, values: &[f64]) {
        for &v in values {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
                self.any_finite = true;
            }
            self.has_nan |= v.is_nan();
        }
    }
}

/// Why a data type change cannot be done.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("cannot convert {from} data to {to}: {why}")]
pub struct ConversionError {
    pub from: DataType,
    pub to: DataType,
    pub why: &'static str,
}

/// Whether working out the target scaling needs a pass over the values.
pub fn needs_range(from: Encoding, to: DataType) -> bool {
    to.is_integer() && from.dtype != to
}

/// The encoding data take in `to`, chosen as nibabel's `SlopeInterArrayWriter` would (as used
/// for NIfTI-1 and NIfTI-2, with float32 scale factors): floats and complex are cast; integers
/// are cast when they fit, shifted by an intercept when that is enough, and otherwise scaled
/// onto the target's range. `range` is the values' range, needed for integer targets.
pub fn target_encoding(
    from: Encoding,
    to: DataType,
    range: Option<ValueRange>,
) -> Result<Encoding, ConversionError> {
    let refuse = |why| ConversionError {
        from: from.dtype,
        to,
        why,
    };
    let rgb = |t: DataType| matches!(t, DataType::Rgb24 | DataType::Rgba32);
    if from.dtype == to {
        return Ok(from);
    }
    if rgb(from.dtype) || rgb(to) {
        return Err(refuse("RGB data cannot be converted to or from numbers"));
    }
    if from.dtype.is_complex() && !to.is_complex() {
        return Err(refuse("complex values have no real-valued equivalent"));
    }
    let cast = Encoding {
        dtype: to,
        scaling: None,
    };
    if !to.is_integer() {
        return Ok(cast);
    }
    let range = range.expect("integer targets need the value range");
    if !range.any_finite || (range.min == 0.0 && range.max == 0.0) {
        // nibabel writes zeros: the conversion clips everything to the range (0, 0).
        return Ok(cast);
    }
    let scaling = if from.dtype.is_integer() && from.scaling.is_none() {
        integer_scaling(range, to)
    } else {
        // nibabel makes room for NaN, which it writes as the stored value of zero.
        let (mut lo, mut hi) = (range.min, range.max);
        if range.has_nan {
            (lo, hi) = (lo.min(0.0), hi.max(0.0));
        }
        Some(range_scaling(lo, hi, range.has_nan, to))
    };
    let Some((slope, inter)) = scaling else {
        return Ok(cast);
    };
    let (slope, inter) = (f64::from(slope as f32), f64::from(inter as f32));
    if slope == 0.0 || !slope.is_finite() || !inter.is_finite() {
        return Err(refuse("the value range is too large for a scale factor"));
    }
    Ok(Encoding {
        dtype: to,
        scaling: Some((slope, inter)),
    })
}

/// The integers both float32 (the scale factors' type) and `to` hold: nibabel's
/// `shared_range`.
fn shared_range(to: DataType) -> (f64, f64) {
    let (lo, hi) = to.integer_limits().expect("integer type");
    (f64::from(f32::at_least(lo)), f64::from(f32::at_most(hi)))
}

/// Scaling for unscaled integers (nibabel's `_iu2iu`): none when they fit, an intercept alone
/// when the range fits, a slope of -1 for non-positive numbers into an unsigned type, or the
/// range scaled.
fn integer_scaling(range: ValueRange, to: DataType) -> Option<(f64, f64)> {
    let (t_lo, t_hi) = to.integer_limits().expect("integer type");
    let (mn, mx) = (range.min as i128, range.max as i128);
    if mn >= t_lo && mx <= t_hi {
        return None;
    }
    let (lo, hi) = shared_range(to);
    let (lo, hi) = (lo as i128, hi as i128);
    if mx - mn <= hi - lo {
        let anchor = if lo == 0 { mn } else { mn + (mx - mn + 1) / 2 };
        let inter = f32::at_most(anchor) as i128;
        if mx - inter <= hi {
            return Some((1.0, inter as f64));
        }
    }
    if lo == 0 && mx <= 0 && -mn <= hi {
        return Some((-1.0, 0.0));
    }
    Some(range_scaling(range.min, range.max, false, to))
}

/// nibabel's `SlopeInterArrayWriter._range_scale`: the line from `lo` to `hi` laid onto the
/// shared range; for unsigned targets the end nearer zero goes to zero. With NaN present and
/// zero at an end, the intercept is moved so that NaN's stored value exists in `to`.
fn range_scaling(lo: f64, hi: f64, has_nan: bool, to: DataType) -> (f64, f64) {
    if lo == hi {
        return (1.0, lo);
    }
    let (out_lo, out_hi) = shared_range(to);
    let mut slope = (hi - lo) / (out_hi - out_lo);
    let mut inter = lo - out_lo * slope;
    if out_lo == 0.0 && hi.abs() < lo.abs() {
        inter = hi + out_lo * slope;
        slope = -slope;
    }
    if has_nan && (lo == 0.0 || hi == 0.0) {
        // nibabel checks with the float32 factors it stores.
        let (s32, i32_) = (slope as f32, inter as f32);
        let nan_fill = -i32_ / s32;
        let (t_lo, t_hi) = to.integer_limits().expect("integer type");
        let fill = nan_fill.round_ties_even();
        if !(fill >= t_lo as f32 && fill <= t_hi as f32) {
            inter = -f64::from(nan_fill).clamp(out_lo, out_hi) * f64::from(s32);
            slope = f64::from(s32);
        }
    }
    (slope, inter)
}

/// Runs `$body` with `$t` naming the Rust number type that stores `$dtype`: complex types as
/// their parts, RGB as bytes.
macro_rules! with_number {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DataType::Uint8 | DataType::Rgb24 | DataType::Rgba32 => {
                type $t = u8;
                $body
            }
            DataType::Int8 => {
                type $t = i8;
                $body
            }
            DataType::Int16 => {
                type $t = i16;
                $body
            }
            DataType::Uint16 => {
                type $t = u16;
                $body
            }
            DataType::Int32 => {
                type $t = i32;
                $body
            }
            DataType::Uint32 => {
                type $t = u32;
                $body
            }
            DataType::Int64 => {
                type $t = i64;
                $body
            }
            DataType::Uint64 => {
                type $t = u64;
                $body
            }
            DataType::Float32 | DataType::Complex64 => {
                type $t = f32;
                $body
            }
            DataType::Float64 | DataType::Complex128 => {
                type $t = f64;
                $body
            }
        }
    };
}

/// Reads stored numbers (as f64) from bytes in `order`. Complex numbers give two values.
pub fn decode(dtype: DataType, order: ByteOrder, bytes: &[u8], out: &mut Vec<f64>) {
    with_number!(dtype, T => decode_as::<T>(order, bytes, out))
}

fn decode_as<T: Number>(order: ByteOrder, bytes: &[u8], out: &mut Vec<f64>) {
    let width = std::mem::size_of::<T>();
    out.clear();
    out.resize(bytes.len() / width, 0.0);
    let pairs = out.iter_mut().zip(bytes.chunks_exact(width));
    // One loop per byte order keeps each branch-free, so they vectorize.
    if order == ByteOrder::native() {
        pairs.for_each(|(o, c)| *o = T::load(c));
    } else {
        pairs.for_each(|(o, c)| *o = T::load_swapped(c));
    }
}

/// Writes values as `dtype` in `order`, rounding and clipping to an integer type's range;
/// NaN becomes 0, as nibabel's `nan2zero` does (callers rescale NaN to the stored zero first).
/// The plain reference the fused conversions are tested against.
#[cfg(test)]
fn encode(dtype: DataType, order: ByteOrder, values: &[f64], out: &mut Vec<u8>) {
    let range = dtype
        .integer_limits()
        .map(|(lo, hi)| (lo as f64, hi as f64));
    with_number!(dtype, T => encode_as::<T>(range, values, out));
    if order != ByteOrder::native() {
        super::data::swap_in_place(out, dtype.swap_width());
    }
}

#[cfg(test)]
fn encode_as<T: Number>(range: Option<(f64, f64)>, values: &[f64], out: &mut Vec<u8>) {
    out.clear();
    out.resize(values.len() * std::mem::size_of::<T>(), 0);
    let pairs = out.chunks_exact_mut(std::mem::size_of::<T>()).zip(values);
    match range {
        Some((lo, hi)) => pairs
            .for_each(|(c, &v)| c.copy_from_slice(bytes_of(&T::from_f64(v.clamp(lo, hi).rint())))),
        None => pairs.for_each(|(c, &v)| c.copy_from_slice(bytes_of(&T::from_f64(v)))),
    }
}

/// The finite range of stored numbers, read straight from bytes (no value buffer).
pub fn stored_range(dtype: DataType, order: ByteOrder, bytes: &[u8]) -> ValueRange {
    let swapped = order != ByteOrder::native();
    with_number!(dtype, T => range_of::<T>(swapped, bytes))
}

fn range_of<T: Number>(swapped: bool, bytes: &[u8]) -> ValueRange {
    #[cfg(target_arch = "x86_64")]
    if !swapped && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor supports AVX2, checked just above.
        return unsafe { range_avx2::<T>(bytes) };
    }
    range_portable::<T>(swapped, bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn range_avx2<T: Number>(bytes: &[u8]) -> ValueRange {
    range_portable::<T>(false, bytes)
}

/// Thirty-two running minima and maxima, so the loop compiles to vector code with several
/// independent accumulators; values that are not finite are skipped.
#[inline(always)]
fn range_portable<T: Number>(swapped: bool, bytes: &[u8]) -> ValueRange {
    const LANES: usize = 32;
    let mut lo = [T::HIGHEST; LANES];
    let mut hi = [T::LOWEST; LANES];
    let mut nan = [false; LANES];
    let mut take = |i: usize, v: T| {
        let finite = v.is_finite_number();
        lo[i] = if finite && v < lo[i] { v } else { lo[i] };
        hi[i] = if finite && v > hi[i] { v } else { hi[i] };
        #[allow(clippy::eq_op)]
        let is_nan = v != v;
        nan[i] |= is_nan;
    };
    // SAFETY: plain number types, for which every bit pattern is a value.
    let (pre, mid, post) = unsafe { bytes.align_to::<T>() };
    if swapped || !pre.is_empty() {
        for c in bytes.chunks_exact(std::mem::size_of::<T>()) {
            take(
                0,
                if swapped {
                    T::read_swapped(c)
                } else {
                    T::read(c)
                },
            );
        }
    } else {
        let mut lanes = mid.chunks_exact(LANES);
        for chunk in &mut lanes {
            for (i, &v) in chunk.iter().enumerate() {
                take(i, v);
            }
        }
        for &v in lanes.remainder() {
            take(0, v);
        }
        for c in post.chunks_exact(std::mem::size_of::<T>()) {
            take(0, T::read(c));
        }
    }
    let pick = |a: T, b: T, smaller: bool| if (a < b) == smaller { a } else { b };
    let lo = lo.into_iter().fold(T::HIGHEST, |a, b| pick(a, b, true));
    let hi = hi.into_iter().fold(T::LOWEST, |a, b| pick(a, b, false));
    let has_nan = nan.contains(&true);
    // Nothing finite leaves the minimum above the maximum.
    if lo <= hi {
        ValueRange {
            min: lo.to_f64(),
            max: hi.to_f64(),
            any_finite: true,
            has_nan,
        }
    } else {
        ValueRange {
            has_nan,
            ..ValueRange::default()
        }
    }
}

impl ValueRange {
    /// The range of both.
    pub fn merge(self, other: ValueRange) -> ValueRange {
        let has_nan = self.has_nan || other.has_nan;
        let finite = match (self.any_finite, other.any_finite) {
            (false, _) => other,
            (_, false) => self,
            _ => ValueRange {
                min: self.min.min(other.min),
                max: self.max.max(other.max),
                any_finite: true,
                has_nan,
            },
        };
        ValueRange { has_nan, ..finite }
    }

    /// The range of values `stored * slope + inter` for stored numbers in this range.
    pub fn scaled(self, scaling: Option<(f64, f64)>) -> ValueRange {
        let Some((slope, inter)) = scaling else {
            return self;
        };
        if !self.any_finite {
            return self;
        }
        let (a, b) = (self.min * slope + inter, self.max * slope + inter);
        ValueRange {
            min: a.min(b),
            max: a.max(b),
            ..self
        }
    }
}

/// Converts whole elements from one encoding to another, in place on a value buffer:
/// stored → value → stored.
pub fn rescale(values: &mut [f64], from: Encoding, to: Encoding) {
    let (s0, i0) = from.scaling.unwrap_or((1.0, 0.0));
    let (s1, i1) = to.scaling.unwrap_or((1.0, 0.0));
    if (s0, i0) == (s1, i1) {
        return;
    }
    let nan_stored = (0.0 - i1) / s1;
    for v in values.iter_mut() {
        let value = *v * s0 + i0;
        *v = if value.is_nan() && to.dtype.is_integer() {
            nan_stored
        } else {
            (value - i1) / s1
        };
    }
}

/// Converts a run of whole elements between encodings and byte orders.
pub fn convert(
    src: &[u8],
    src_order: ByteOrder,
    from: Encoding,
    to: Encoding,
    values: Option<ValueRange>,
    dst_order: ByteOrder,
    out: &mut Vec<u8>,
) {
    let numbers = src.len() / from.dtype.swap_width();
    out.clear();
    out.resize(numbers * to.dtype.swap_width(), 0);
    convert_into(src, src_order, from, to, values, out);
    if dst_order != ByteOrder::native() {
        super::data::swap_in_place(out, to.dtype.swap_width());
    }
}

/// Converts whole elements into `dst` (exactly their size), in native byte order. `values` is
/// the range of the whole image's values when known: for integer targets it bounds the stored
/// numbers as nibabel's writer does (infinities go to the ends of that range).
pub fn convert_into(
    src: &[u8],
    src_order: ByteOrder,
    from: Encoding,
    to: Encoding,
    values: Option<ValueRange>,
    dst: &mut [u8],
) {
    let swapped;
    let src = if src_order == ByteOrder::native() {
        src
    } else {
        swapped = {
            let mut copy = src.to_vec();
            super::data::swap_in_place(&mut copy, from.dtype.swap_width());
            copy
        };
        &swapped
    };
    let (s0, i0) = from.scaling.unwrap_or((1.0, 0.0));
    if to.dtype.is_integer() {
        if from.dtype.is_integer() && from.scaling.is_none() && to.scaling.is_none() {
            with_number!(from.dtype, S => with_number!(to.dtype, D => int_cast::<S, D>(src, dst)));
            return;
        }
        // nibabel's arithmetic in nibabel's working type, so that the stored integers are the
        // ones nibabel would write.
        let factors = to.scaling.unwrap_or((1.0, 0.0));
        let bounds = values.map(|v| {
            if v.any_finite {
                (v.min, v.max)
            } else {
                (0.0, 0.0)
            }
        });
        if from.scaling.is_none()
            && fits_f32_exactly(from.dtype)
            && is_f32(factors.0)
            && is_f32(factors.1)
        {
            with_number!(from.dtype, S => with_number!(to.dtype, D => {
                ScaledWrite::<f32>::new::<D>((1.0, 0.0), factors, bounds).run::<S, D>(src, dst)
            }));
        } else {
            with_number!(from.dtype, S => with_number!(to.dtype, D => {
                ScaledWrite::<f64>::new::<D>((s0, i0), factors, bounds).run::<S, D>(src, dst)
            }));
        }
        return;
    }
    // stored_out = (stored_in * s0 + i0 - i1) / s1, folded into one multiply-add: a cast
    // with the source's scaling applied (float targets take no scaling of their own).
    let (s1, i1) = to.scaling.unwrap_or((1.0, 0.0));
    let plan = Fused {
        mul: s0 / s1,
        add: (i0 - i1) / s1,
    };
    with_number!(from.dtype, S => with_number!(to.dtype, D => plan.run::<S, D>(src, dst)));
}

/// Integers to integers, clipped to the target's range, exactly at any width.
fn int_cast<S: Number, D: Number>(src: &[u8], out: &mut [u8]) {
    let (lo, hi) = (D::LOWEST.to_i128(), D::HIGHEST.to_i128());
    run_fast(src, out, |s: S| D::from_i128(s.to_i128().clamp(lo, hi)))
}

/// Whether nibabel scales data of this type in float32 when the scale factors are float32
/// (its `working_type`): float32 itself and the integers float32 holds exactly.
fn fits_f32_exactly(dtype: DataType) -> bool {
    matches!(
        dtype,
        DataType::Float32 | DataType::Uint8 | DataType::Int8 | DataType::Int16 | DataType::Uint16
    )
}

fn is_f32(x: f64) -> bool {
    x as f32 as f64 == x
}

/// A number type as stored in a file.
trait Number: Copy + PartialOrd {
    const LOWEST: Self;
    const HIGHEST: Self;
    fn read(bytes: &[u8]) -> Self;
    fn read_swapped(bytes: &[u8]) -> Self;
    fn to_f64(self) -> f64;
    fn is_finite_number(self) -> bool;
    fn to_f32(self) -> f32;
    /// Exact for integers (floats saturate).
    fn to_i128(self) -> i128;
    /// `as`: exact for integers this type holds, which callers clip to first.
    fn from_i128(value: i128) -> Self;
    /// The nearest value of this type (`as`: saturating, NaN to 0).
    fn from_f64(value: f64) -> Self;
    /// As `from_f64`, without the saturation, so that it vectorizes.
    ///
    /// # Safety
    /// `value` must be a number that this type holds.
    unsafe fn from_f64_held(value: f64) -> Self;
    /// As `from_f64_held`, from a float32.
    ///
    /// # Safety
    /// As `from_f64_held`.
    unsafe fn from_f32_held(value: f32) -> Self;

    #[inline(always)]
    fn load(bytes: &[u8]) -> f64 {
        Self::read(bytes).to_f64()
    }

    #[inline(always)]
    fn load_swapped(bytes: &[u8]) -> f64 {
        Self::read_swapped(bytes).to_f64()
    }
}

macro_rules! int_held {
    ($v:expr, $t:ty) => {
        // SAFETY: the caller promises a number that the integer type holds.
        unsafe { $v.to_int_unchecked::<$t>() }
    };
}
macro_rules! int_finite {
    ($v:expr) => {{
        let _ = $v;
        true
    }};
}
macro_rules! float_finite {
    ($v:expr) => {
        $v.is_finite()
    };
}
macro_rules! float_held {
    ($v:expr, $t:ty) => {
        $v as $t
    };
}
macro_rules! number {
    ($held:ident, $finite:ident: $($t:ty),*) => {$(
        impl Number for $t {
            const LOWEST: Self = <$t>::MIN;
            const HIGHEST: Self = <$t>::MAX;
            #[inline(always)]
            fn read(bytes: &[u8]) -> Self {
                <$t>::from_ne_bytes(bytes.try_into().expect("width"))
            }
            #[inline(always)]
            fn read_swapped(bytes: &[u8]) -> Self {
                let mut raw: [u8; std::mem::size_of::<$t>()] = bytes.try_into().expect("width");
                raw.reverse();
                <$t>::from_ne_bytes(raw)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn is_finite_number(self) -> bool {
                $finite!(self)
            }
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            #[inline(always)]
            #[allow(clippy::unnecessary_cast)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn to_i128(self) -> i128 {
                self as i128
            }
            #[inline(always)]
            fn from_i128(value: i128) -> Self {
                value as $t
            }
            #[inline(always)]
            unsafe fn from_f64_held(value: f64) -> Self {
                $held!(value, $t)
            }
            #[inline(always)]
            unsafe fn from_f32_held(value: f32) -> Self {
                $held!(value, $t)
            }
        }
    )*};
}
number!(int_held, int_finite: u8, i8, i16, u16, i32, u32, i64, u64);
number!(float_held, float_finite: f32, f64);

/// A cast to a float type with scaling folded into one multiply-add, in one pass per element
/// so that the compiler can vectorize it for each pair of types.
struct Fused {
    mul: f64,
    add: f64,
}

impl Fused {
    fn run<S: Number, D: Number>(&self, src: &[u8], out: &mut [u8]) {
        run_fast(src, out, |s: S| {
            D::from_f64(s.to_f64() * self.mul + self.add)
        })
    }
}

/// The floating-point type a scaled write computes in.
trait Working:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of_f64(x: f64) -> Self;
    fn of<S: Number>(s: S) -> Self;
    /// # Safety
    /// `self` must be a number that `D` holds.
    unsafe fn to_held<D: Number>(self) -> D;
    fn is_nan(self) -> bool;
    fn rint(self) -> Self;
    fn next_down(self) -> Self;
    fn next_up(self) -> Self;
    fn to_i128(self) -> i128;

    /// The largest value of this type that is not above the integer `x`.
    fn at_most(x: i128) -> Self {
        let mut y = Self::of_f64(x as f64);
        while y.to_i128() > x {
            y = y.next_down();
        }
        y
    }

    /// The smallest value of this type that is not below the integer `x`.
    fn at_least(x: i128) -> Self {
        let mut y = Self::of_f64(x as f64);
        while y.to_i128() < x {
            y = y.next_up();
        }
        y
    }
}

macro_rules! working {
    ($t:ty, $of:ident, $held:ident, $magic:expr) => {
        impl Working for $t {
            #[inline(always)]
            fn of_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn of<S: Number>(s: S) -> Self {
                s.$of()
            }
            #[inline(always)]
            unsafe fn to_held<D: Number>(self) -> D {
                // SAFETY: the caller's promise.
                unsafe { D::$held(self) }
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                self.is_nan()
            }
            /// Round half to even (numpy's `rint`) without a libm call: adding and removing
            /// 1.5 * 2^(mantissa bits) leaves the rounded value; numbers of half that
            /// magnitude or more are integers already.
            #[inline(always)]
            fn rint(self) -> Self {
                const MAGIC: $t = $magic;
                if self.abs() < MAGIC / 3.0 {
                    (self + MAGIC) - MAGIC
                } else {
                    self
                }
            }
            fn next_down(self) -> Self {
                self.next_down()
            }
            fn next_up(self) -> Self {
                self.next_up()
            }
            fn to_i128(self) -> i128 {
                self as i128
            }
        }
    };
}
working!(f32, to_f32, from_f32_held, 12_582_912.0);
working!(f64, to_f64, from_f64_held, 6_755_399_441_055_744.0);

/// nibabel's `array_to_file` for an integer target with scaling: `rint((value - inter) /
/// slope)`, clipped to the integers both the working type and the target hold, and NaN to the
/// stored value of zero (`nan2zero`).
struct ScaledWrite<W> {
    s0: W,
    i0: W,
    slope: W,
    inter: W,
    nan: W,
    lo: W,
    hi: W,
}

impl<W: Working> ScaledWrite<W> {
    /// The plan for writing to `D` numbers whose values are `stored * source.0 + source.1`,
    /// within `bounds` when known.
    fn new<D: Number>(
        source: (f64, f64),
        (slope, inter): (f64, f64),
        bounds: Option<(f64, f64)>,
    ) -> Self {
        let (slope, inter) = (W::of_f64(slope), W::of_f64(inter));
        let stored = |value: f64| ((W::of_f64(value) - inter) / slope).rint();
        // The integers both types hold (nibabel's `shared_range`)...
        let (mut lo, mut hi) = (
            W::at_least(D::LOWEST.to_i128()),
            W::at_most(D::HIGHEST.to_i128()),
        );
        let clip = |v: W, lo: W, hi: W| {
            if v < lo {
                lo
            } else if v > hi {
                hi
            } else {
                v
            }
        };
        let nan = clip(stored(0.0), lo, hi);
        // ...narrowed to where the values' range lands, which bounds infinities.
        if let Some((min, max)) = bounds {
            let (a, b) = (stored(min), stored(max));
            let (a, b) = if a > b { (b, a) } else { (a, b) };
            (lo, hi) = (clip(a, lo, hi), clip(b, lo, hi));
        }
        ScaledWrite {
            s0: W::of_f64(source.0),
            i0: W::of_f64(source.1),
            slope,
            inter,
            nan,
            lo,
            hi,
        }
    }

    #[inline(always)]
    fn one<S: Number>(&self, s: S) -> W {
        // Written as selects, not branches, so that the loop vectorizes.
        let v = ((W::of(s) * self.s0 + self.i0) - self.inter) / self.slope;
        let r = v.rint();
        let r = if r < self.lo { self.lo } else { r };
        let r = if r > self.hi { self.hi } else { r };
        if v.is_nan() { self.nan } else { r }
    }

    fn run<S: Number, D: Number>(&self, src: &[u8], out: &mut [u8]) {
        // SAFETY: `one` gives integers within lo..=hi, which D holds (see `new`).
        run_fast(src, out, |s: S| unsafe { self.one(s).to_held::<D>() })
    }
}

/// Applies `f` to each element of `src`, writing `out`, with AVX2 where the processor has it:
/// the same loop compiled for wider lanes than SSE2's.
#[inline(always)]
fn run_fast<S: Number, D: Number>(src: &[u8], out: &mut [u8], f: impl Fn(S) -> D) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor supports AVX2, checked just above.
        return unsafe { run_avx2(src, out, f) };
    }
    run_portable(src, out, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<S: Number, D: Number>(src: &[u8], out: &mut [u8], f: impl Fn(S) -> D) {
    run_portable(src, out, f)
}

#[inline(always)]
fn run_portable<S: Number, D: Number>(src: &[u8], out: &mut [u8], f: impl Fn(S) -> D) {
    // SAFETY: plain number types, for which every bit pattern is a value; align_to only
    // hands out the correctly aligned middle.
    let (s_pre, s_mid, s_post) = unsafe { src.align_to::<S>() };
    // SAFETY: as above.
    let (d_pre, d_mid, d_post) = unsafe { out.align_to_mut::<D>() };
    let aligned = s_pre.is_empty() && s_post.is_empty() && d_pre.is_empty();
    if aligned && d_post.is_empty() && s_mid.len() == d_mid.len() {
        // Typed slices on both sides: the loop the compiler vectorizes.
        for (d, &s) in d_mid.iter_mut().zip(s_mid) {
            *d = f(s);
        }
        return;
    }
    let (ws, wd) = (std::mem::size_of::<S>(), std::mem::size_of::<D>());
    for (s, d) in src.chunks_exact(ws).zip(out.chunks_exact_mut(wd)) {
        d.copy_from_slice(bytes_of(&f(S::read(s))));
    }
}

fn bytes_of<T: Number>(x: &T) -> &[u8] {
    // SAFETY: a plain number viewed as its bytes.
    unsafe { std::slice::from_raw_parts((x as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(dtype: DataType, scaling: Option<(f64, f64)>) -> Encoding {
        Encoding { dtype, scaling }
    }

    #[test]
    fn float_to_int16_uses_the_whole_range() {
        let mut r = ValueRange::default();
        r.add(&[-1.0, 0.5, 3.0]);
        let to = target_encoding(enc(DataType::Float32, None), DataType::Int16, Some(r)).unwrap();
        let (s, i) = to.scaling.unwrap();
        // Float32 scale factors: the ends land within rounding of the type's ends.
        assert!(((-1.0 - i) / s - -32768.0).abs() < 0.01);
        assert!(((3.0 - i) / s - 32767.0).abs() < 0.01);
        let mut out = Vec::new();
        let src: Vec<u8> = [-1.0f32, 0.5, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        convert(
            &src,
            ByteOrder::Little,
            enc(DataType::Float32, None),
            to,
            Some(r),
            ByteOrder::Big,
            &mut out,
        );
        let back: Vec<f64> = out
            .chunks(2)
            .map(|c| f64::from(i16::from_be_bytes([c[0], c[1]])) * s + i)
            .collect();
        for (a, b) in back.iter().zip([-1.0, 0.5, 3.0]) {
            assert!((a - b).abs() <= s, "{a} vs {b}");
        }
    }

    #[test]
    fn fitting_integers_are_cast_without_scaling() {
        let mut r = ValueRange::default();
        r.add(&[0.0, 200.0]);
        let to = target_encoding(enc(DataType::Int32, None), DataType::Uint8, Some(r)).unwrap();
        assert_eq!(to.scaling, None);
    }

    #[test]
    fn complex_to_real_is_refused() {
        let err =
            target_encoding(enc(DataType::Complex64, None), DataType::Float32, None).unwrap_err();
        assert!(err.to_string().contains("complex"));
    }

    proptest! {
        /// The fused per-type loop agrees with the plain decode, rescale, encode route.
        #[test]
        fn fused_conversion_matches_the_reference(
            from_i in 0usize..10, to_i in 0usize..10, seed in any::<u64>(),
            s0 in prop_oneof![Just(None), (0.5f64..3.0, -5.0f64..5.0).prop_map(Some)],
            s1 in prop_oneof![Just(None), (0.5f64..3.0, -5.0f64..5.0).prop_map(Some)],
            big_in in any::<bool>(), big_out in any::<bool>(), f32_scale in any::<bool>(),
        ) {
            // NIfTI-1 scale factors are float32, which lets nibabel scale in float32.
            let s1 = s1.map(|(s, i)| if f32_scale { (s as f32 as f64, i as f32 as f64) } else { (s, i) });
            const REAL: [DataType; 10] = [
                DataType::Uint8, DataType::Int8, DataType::Int16, DataType::Uint16, DataType::Int32,
                DataType::Uint32, DataType::Int64, DataType::Uint64, DataType::Float32,
                DataType::Float64,
            ];
            let (from, to) = (enc(REAL[from_i], s0), enc(REAL[to_i], s1));
            let order = |big| if big { ByteOrder::Big } else { ByteOrder::Little };
            let mut x = seed | 1;
            let src: Vec<u8> = (0..from.dtype.size() * 37)
                .map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 })
                .collect();
            let mut fused = Vec::new();
            convert(&src, order(big_in), from, to, None, order(big_out), &mut fused);
            let mut values = Vec::new();
            decode(from.dtype, order(big_in), &src, &mut values);
            rescale(&mut values, from, to);
            let mut reference = Vec::new();
            encode(to.dtype, order(big_out), &values, &mut reference);
            let mut a = Vec::new();
            let mut b = Vec::new();
            decode(to.dtype, order(big_out), &fused, &mut a);
            decode(to.dtype, order(big_out), &reference, &mut b);
            prop_assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                let in_f32 = to.dtype.is_integer()
                    && !(from.dtype.is_integer() && s1.is_none())
                    && s0.is_none()
                    && fits_f32_exactly(from.dtype)
                    && s1.is_none_or(|(s, i)| is_f32(s) && is_f32(i));
                let tol = if to.dtype.is_integer() {
                    b.abs().mul_add(if in_f32 { 2.5e-7 } else { 1e-15 }, 1.0)
                } else {
                    1e-6 * b.abs().max(1.0)
                };
                prop_assert!(a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol
                    || (a.is_infinite() && b.is_infinite()), "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn the_stored_range_skips_values_that_are_not_finite() {
        let values = [f32::NAN, 3.0, -2.5, f32::INFINITY, 7.25, f32::NEG_INFINITY];
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let bytes: Vec<u8> = values
                .iter()
                .cycle()
                .take(61)
                .flat_map(|v| match order {
                    ByteOrder::Little => v.to_le_bytes(),
                    ByteOrder::Big => v.to_be_bytes(),
                })
                .collect();
            let r = stored_range(DataType::Float32, order, &bytes);
            assert_eq!((r.min, r.max, r.any_finite), (-2.5, 7.25, true));
        }
        let none = stored_range(
            DataType::Float64,
            ByteOrder::native(),
            &f64::NAN.to_ne_bytes(),
        );
        assert!(!none.any_finite);
        let ints: Vec<u8> = [5i16, -300, 12]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let r = stored_range(DataType::Int16, ByteOrder::native(), &ints);
        assert_eq!((r.min, r.max), (-300.0, 12.0));
    }

    #[test]
    fn nan_becomes_zero_in_integers() {
        let mut values = vec![f64::NAN, 4.0];
        rescale(
            &mut values,
            enc(DataType::Float32, None),
            enc(DataType::Int16, Some((2.0, 0.0))),
        );
        assert_eq!(values, vec![0.0, 2.0]);
    }
}
