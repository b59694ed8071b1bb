//! NIfTI data type codes and what they mean for voxel bytes.

use std::fmt;

/// A voxel data type that imgfs can hold, render and convert.
///
/// float128 and complex256 (codes 1536 and 2048) are refused: their on-disk layout depends on the
/// platform that wrote them, and neither FSL nor MRtrix3 reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Uint8,
    Int16,
    Int32,
    Float32,
    Complex64,
    Float64,
    Rgb24,
    Int8,
    Uint16,
    Uint32,
    Int64,
    Uint64,
    Complex128,
    Rgba32,
}

pub const ALL: [DataType; 14] = [
    DataType::Uint8,
    DataType::Int16,
    DataType::Int32,
    DataType::Float32,
    DataType::Complex64,
    DataType::Float64,
    DataType::Rgb24,
    DataType::Int8,
    DataType::Uint16,
    DataType::Uint32,
    DataType::Int64,
    DataType::Uint64,
    DataType::Complex128,
    DataType::Rgba32,
];

impl DataType {
    /// The NIfTI `datatype` code, as stored in the header.
    pub fn code(self) -> i16 {
        match self {
            DataType::Uint8 => 2,
            DataType::Int16 => 4,
            DataType::Int32 => 8,
            DataType::Float32 => 16,
            DataType::Complex64 => 32,
            DataType::Float64 => 64,
            DataType::Rgb24 => 128,
            DataType::Int8 => 256,
            DataType::Uint16 => 512,
            DataType::Uint32 => 768,
            DataType::Int64 => 1024,
            DataType::Uint64 => 1280,
            DataType::Complex128 => 1792,
            DataType::Rgba32 => 2304,
        }
    }

    /// Looks a code up; `Err` carries a description of why it is not served.
    pub fn from_code(code: i64) -> Result<DataType, String> {
        if let Some(t) = ALL.iter().copied().find(|t| i64::from(t.code()) == code) {
            return Ok(t);
        }
        Err(match code {
            0 => "datatype 0 (unknown) is not a readable data type".to_string(),
            1 => "datatype 1 (binary, 1 bit per voxel) is not supported".to_string(),
            1536 => "datatype 1536 (float128) is not supported".to_string(),
            2048 => "datatype 2048 (complex256) is not supported".to_string(),
            other => format!("datatype {other} is not a NIfTI data type"),
        })
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 | DataType::Uint16 => 2,
            DataType::Rgb24 => 3,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 | DataType::Rgba32 => 4,
            DataType::Float64 | DataType::Int64 | DataType::Uint64 | DataType::Complex64 => 8,
            DataType::Complex128 => 16,
        }
    }

    pub fn bitpix(self) -> i16 {
        (self.size() * 8) as i16
    }

    /// The width of the units that a byte-order swap reverses: a complex number swaps each of
    /// its two parts, an RGB triple not at all.
    pub fn swap_width(self) -> usize {
        match self {
            DataType::Complex64 => 4,
            DataType::Complex128 => 8,
            DataType::Rgb24 | DataType::Rgba32 => 1,
            other => other.size(),
        }
    }

    /// nibabel's (numpy's) name for the type, which is also what the CLI accepts.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Uint8 => "uint8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Float32 => "float32",
            DataType::Complex64 => "complex64",
            DataType::Float64 => "float64",
            DataType::Rgb24 => "RGB",
            DataType::Int8 => "int8",
            DataType::Uint16 => "uint16",
            DataType::Uint32 => "uint32",
            DataType::Int64 => "int64",
            DataType::Uint64 => "uint64",
            DataType::Complex128 => "complex128",
            DataType::Rgba32 => "RGBA",
        }
    }

    /// Parses a numpy name, a NIfTI name (`NIFTI_TYPE_INT16`, `DT_SIGNED_SHORT`'s `short`...)
    /// or a numeric code.
    pub fn from_name(text: &str) -> Option<DataType> {
        let lower = text.trim().to_ascii_lowercase();
        if let Ok(code) = lower.parse::<i64>() {
            return DataType::from_code(code).ok();
        }
        let bare = lower
            .trim_start_matches("nifti_type_")
            .trim_start_matches("dt_");
        Some(match bare {
            "uint8" | "u1" | "unsigned char" | "uchar" => DataType::Uint8,
            "int16" | "i2" | "short" | "signed_short" => DataType::Int16,
            "int32" | "i4" | "int" | "signed_int" => DataType::Int32,
            "float32" | "f4" | "float" => DataType::Float32,
            "complex64" | "c8" | "complex" => DataType::Complex64,
            "float64" | "f8" | "double" => DataType::Float64,
            "rgb" | "rgb24" => DataType::Rgb24,
            "int8" | "i1" | "char" => DataType::Int8,
            "uint16" | "u2" => DataType::Uint16,
            "uint32" | "u4" => DataType::Uint32,
            "int64" | "i8" => DataType::Int64,
            "uint64" | "u8" => DataType::Uint64,
            "complex128" | "c16" => DataType::Complex128,
            "rgba" | "rgba32" => DataType::Rgba32,
            _ => return None,
        })
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::Uint8
                | DataType::Int8
                | DataType::Int16
                | DataType::Uint16
                | DataType::Int32
                | DataType::Uint32
                | DataType::Int64
                | DataType::Uint64
        )
    }

    pub fn is_complex(self) -> bool {
        matches!(self, DataType::Complex64 | DataType::Complex128)
    }

    /// The smallest and largest values an integer type holds, exactly.
    pub fn integer_limits(self) -> Option<(i128, i128)> {
        Some(match self {
            DataType::Uint8 => (0, u8::MAX.into()),
            DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
            DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
            DataType::Uint16 => (0, u16::MAX.into()),
            DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
            DataType::Uint32 => (0, u32::MAX.into()),
            DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
            DataType::Uint64 => (0, u64::MAX.into()),
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for t in ALL {
            assert_eq!(DataType::from_code(i64::from(t.code())), Ok(t));
            assert_eq!(DataType::from_name(t.name()), Some(t));
            assert_eq!(i64::from(t.bitpix()), 8 * t.size() as i64);
        }
    }

    #[test]
    fn refused_types_say_why() {
        assert!(DataType::from_code(1536).unwrap_err().contains("float128"));
        assert!(
            DataType::from_code(2048)
                .unwrap_err()
                .contains("complex256")
        );
        assert!(
            DataType::from_code(7)
                .unwrap_err()
                .contains("not a NIfTI data type")
        );
    }
}
