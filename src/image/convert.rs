//! Changing an image's data type: the scaling nibabel's array writers would choose, and the
//! element-by-element conversion that the renderer applies to any byte range.

use crate::format::{ByteOrder, DataType};

/// How stored numbers map to the values a reader sees: `value = stored * slope + inter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Encoding {
    pub dtype: DataType,
    pub scaling: Option<(f64, f64)>,
}

/// The finite range of an image's values, and whether any value is not finite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueRange {
    pub min: f64,
    pub max: f64,
    pub any_finite: bool,
}

impl Default for ValueRange {
    fn default() -> Self {
        ValueRange {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            any_finite: false,
        }
    }
}

impl ValueRange {
    pub fn add(&mut self, values: &[f64]) {
        for &v in values {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
                self.any_finite = true;
            }
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

/// The encoding data take in `to`, chosen as nibabel's `SlopeInterArrayWriter` would: floats
/// and complex are cast; integers are scaled to the target's range unless they fit as they
/// are. `store_f32` rounds the scaling to what a NIfTI-1 header can hold.
pub fn target_encoding(
    from: Encoding,
    to: DataType,
    range: Option<ValueRange>,
    store_f32: bool,
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
    if !to.is_integer() {
        return Ok(Encoding {
            dtype: to,
            scaling: None,
        });
    }
    let range = range.expect("integer targets need the value range");
    let (out_min, out_max) = to.integer_range().expect("integer type");
    if !range.any_finite || (range.min == 0.0 && range.max == 0.0) {
        return Ok(Encoding {
            dtype: to,
            scaling: None,
        });
    }
    let integral = from.dtype.is_integer() && from.scaling.is_none();
    if integral && range.min >= out_min && range.max <= out_max {
        return Ok(Encoding {
            dtype: to,
            scaling: None,
        });
    }
    let round = |x: f64| if store_f32 { x as f32 as f64 } else { x };
    let (slope, inter) = if range.max == range.min {
        (1.0, range.min)
    } else {
        let slope = (range.max - range.min) / (out_max - out_min);
        (slope, range.min - out_min * slope)
    };
    let slope = round(slope);
    let inter = round(inter);
    if slope == 0.0 || !slope.is_finite() {
        return Err(refuse("the value range is too large for a scale factor"));
    }
    Ok(Encoding {
        dtype: to,
        scaling: Some((slope, inter)),
    })
}

/// Reads stored numbers (as f64) from bytes in `order`. Complex numbers give two values.
pub fn decode(dtype: DataType, order: ByteOrder, bytes: &[u8], out: &mut Vec<f64>) {
    out.clear();
    let big = order == ByteOrder::Big;
    macro_rules! run {
        ($t:ty, $n:expr) => {
            out.extend(bytes.chunks_exact($n).map(|c| {
                let raw: [u8; $n] = c.try_into().expect("chunk width");
                (if big {
                    <$t>::from_be_bytes(raw)
                } else {
                    <$t>::from_le_bytes(raw)
                }) as f64
            }))
        };
    }
    match dtype {
        DataType::Uint8 | DataType::Rgb24 | DataType::Rgba32 => {
            out.extend(bytes.iter().map(|&b| f64::from(b)))
        }
        DataType::Int8 => out.extend(bytes.iter().map(|&b| f64::from(b as i8))),
        DataType::Int16 => run!(i16, 2),
        DataType::Uint16 => run!(u16, 2),
        DataType::Int32 => run!(i32, 4),
        DataType::Uint32 => run!(u32, 4),
        DataType::Int64 => run!(i64, 8),
        DataType::Uint64 => run!(u64, 8),
        DataType::Float32 | DataType::Complex64 => run!(f32, 4),
        DataType::Float64 | DataType::Complex128 => run!(f64, 8),
    }
}

/// Writes values as `dtype` in `order`, rounding and clipping to an integer type's range;
/// NaN becomes the stored number nearest to value 0, as nibabel's `nan2zero` does.
pub fn encode(dtype: DataType, order: ByteOrder, values: &[f64], out: &mut Vec<u8>) {
    out.clear();
    let big = order == ByteOrder::Big;
    macro_rules! run {
        ($t:ty) => {{
            let (lo, hi) = dtype
                .integer_range()
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
            for &v in values {
                let v = if dtype.is_integer() {
                    if v.is_nan() {
                        0.0
                    } else {
                        v.round().clamp(lo, hi)
                    }
                } else {
                    v
                };
                let x = v as $t;
                out.extend_from_slice(&if big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                });
            }
        }};
    }
    match dtype {
        DataType::Uint8 | DataType::Rgb24 | DataType::Rgba32 => run!(u8),
        DataType::Int8 => run!(i8),
        DataType::Int16 => run!(i16),
        DataType::Uint16 => run!(u16),
        DataType::Int32 => run!(i32),
        DataType::Uint32 => run!(u32),
        DataType::Int64 => run!(i64),
        DataType::Uint64 => run!(u64),
        DataType::Float32 | DataType::Complex64 => run!(f32),
        DataType::Float64 | DataType::Complex128 => run!(f64),
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
    dst_order: ByteOrder,
    out: &mut Vec<u8>,
) {
    let mut values = Vec::with_capacity(src.len());
    decode(from.dtype, src_order, src, &mut values);
    rescale(&mut values, from, to);
    encode(to.dtype, dst_order, &values, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(dtype: DataType, scaling: Option<(f64, f64)>) -> Encoding {
        Encoding { dtype, scaling }
    }

    #[test]
    fn float_to_int16_uses_the_whole_range() {
        let mut r = ValueRange::default();
        r.add(&[-1.0, 0.5, 3.0]);
        let to = target_encoding(
            enc(DataType::Float32, None),
            DataType::Int16,
            Some(r),
            false,
        )
        .unwrap();
        let (s, i) = to.scaling.unwrap();
        assert!(((-1.0 - i) / s - -32768.0).abs() < 1e-9);
        assert!(((3.0 - i) / s - 32767.0).abs() < 1e-9);
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
        let to =
            target_encoding(enc(DataType::Int32, None), DataType::Uint8, Some(r), true).unwrap();
        assert_eq!(to.scaling, None);
    }

    #[test]
    fn complex_to_real_is_refused() {
        let err = target_encoding(
            enc(DataType::Complex64, None),
            DataType::Float32,
            None,
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("complex"));
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
