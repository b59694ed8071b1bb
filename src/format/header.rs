//! The three header layouts (NIfTI-1, NIfTI-2, Analyze 7.5) as one type.
//!
//! A header is kept as its raw bytes plus a table of named fields, so a header that was loaded
//! and not edited writes back byte for byte, including fields imgfs has no use for, and every
//! field is reachable by the name nibabel gives it.

use super::affine::{self, Affine};
use super::dtype::DataType;

/// Which header layout a header uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    Analyze,
    Nifti1,
    Nifti2,
}

impl Flavor {
    pub fn header_len(self) -> usize {
        match self {
            Flavor::Analyze | Flavor::Nifti1 => 348,
            Flavor::Nifti2 => 540,
        }
    }

    /// The smallest `vox_offset` of a single-file image: the header plus the four
    /// extension-flag bytes.
    pub fn min_single_offset(self) -> u64 {
        self.header_len() as u64 + 4
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Analyze => "analyze",
            Flavor::Nifti1 => "nifti1",
            Flavor::Nifti2 => "nifti2",
        }
    }

    fn fields(self) -> &'static [Field] {
        match self {
            Flavor::Analyze => ANALYZE_FIELDS,
            Flavor::Nifti1 => NIFTI1_FIELDS,
            Flavor::Nifti2 => NIFTI2_FIELDS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    pub fn native() -> ByteOrder {
        if cfg!(target_endian = "little") {
            ByteOrder::Little
        } else {
            ByteOrder::Big
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Little => "little",
            ByteOrder::Big => "big",
        }
    }
}

/// How a field's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    U8,
    I16,
    I32,
    I64,
    F32,
    F64,
    /// A fixed-length byte string, NUL padded.
    Text,
}

impl Kind {
    fn width(self) -> usize {
        match self {
            Kind::U8 | Kind::Text => 1,
            Kind::I16 => 2,
            Kind::I32 | Kind::F32 => 4,
            Kind::I64 | Kind::F64 => 8,
        }
    }
}

/// One named field of a header layout.
#[derive(Debug)]
struct Field {
    name: &'static str,
    offset: usize,
    kind: Kind,
    count: usize,
}

const fn f(name: &'static str, offset: usize, kind: Kind, count: usize) -> Field {
    Field {
        name,
        offset,
        kind,
        count,
    }
}

static NIFTI1_FIELDS: &[Field] = &[
    f("sizeof_hdr", 0, Kind::I32, 1),
    f("data_type", 4, Kind::Text, 10),
    f("db_name", 14, Kind::Text, 18),
    f("extents", 32, Kind::I32, 1),
    f("session_error", 36, Kind::I16, 1),
    f("regular", 38, Kind::Text, 1),
    f("dim_info", 39, Kind::U8, 1),
    f("dim", 40, Kind::I16, 8),
    f("intent_p1", 56, Kind::F32, 1),
    f("intent_p2", 60, Kind::F32, 1),
    f("intent_p3", 64, Kind::F32, 1),
    f("intent_code", 68, Kind::I16, 1),
    f("datatype", 70, Kind::I16, 1),
    f("bitpix", 72, Kind::I16, 1),
    f("slice_start", 74, Kind::I16, 1),
    f("pixdim", 76, Kind::F32, 8),
    f("vox_offset", 108, Kind::F32, 1),
    f("scl_slope", 112, Kind::F32, 1),
    f("scl_inter", 116, Kind::F32, 1),
    f("slice_end", 120, Kind::I16, 1),
    f("slice_code", 122, Kind::U8, 1),
    f("xyzt_units", 123, Kind::U8, 1),
    f("cal_max", 124, Kind::F32, 1),
    f("cal_min", 128, Kind::F32, 1),
    f("slice_duration", 132, Kind::F32, 1),
    f("toffset", 136, Kind::F32, 1),
    f("glmax", 140, Kind::I32, 1),
    f("glmin", 144, Kind::I32, 1),
    f("descrip", 148, Kind::Text, 80),
    f("aux_file", 228, Kind::Text, 24),
    f("qform_code", 252, Kind::I16, 1),
    f("sform_code", 254, Kind::I16, 1),
    f("quatern_b", 256, Kind::F32, 1),
    f("quatern_c", 260, Kind::F32, 1),
    f("quatern_d", 264, Kind::F32, 1),
    f("qoffset_x", 268, Kind::F32, 1),
    f("qoffset_y", 272, Kind::F32, 1),
    f("qoffset_z", 276, Kind::F32, 1),
    f("srow_x", 280, Kind::F32, 4),
    f("srow_y", 296, Kind::F32, 4),
    f("srow_z", 312, Kind::F32, 4),
    f("intent_name", 328, Kind::Text, 16),
    f("magic", 344, Kind::Text, 4),
];

static NIFTI2_FIELDS: &[Field] = &[
    f("sizeof_hdr", 0, Kind::I32, 1),
    f("magic", 4, Kind::Text, 4),
    f("eol_check", 8, Kind::U8, 4),
    f("datatype", 12, Kind::I16, 1),
    f("bitpix", 14, Kind::I16, 1),
    f("dim", 16, Kind::I64, 8),
    f("intent_p1", 80, Kind::F64, 1),
    f("intent_p2", 88, Kind::F64, 1),
    f("intent_p3", 96, Kind::F64, 1),
    f("pixdim", 104, Kind::F64, 8),
    f("vox_offset", 168, Kind::I64, 1),
    f("scl_slope", 176, Kind::F64, 1),
    f("scl_inter", 184, Kind::F64, 1),
    f("cal_max", 192, Kind::F64, 1),
    f("cal_min", 200, Kind::F64, 1),
    f("slice_duration", 208, Kind::F64, 1),
    f("toffset", 216, Kind::F64, 1),
    f("slice_start", 224, Kind::I64, 1),
    f("slice_end", 232, Kind::I64, 1),
    f("descrip", 240, Kind::Text, 80),
    f("aux_file", 320, Kind::Text, 24),
    f("qform_code", 344, Kind::I32, 1),
    f("sform_code", 348, Kind::I32, 1),
    f("quatern_b", 352, Kind::F64, 1),
    f("quatern_c", 360, Kind::F64, 1),
    f("quatern_d", 368, Kind::F64, 1),
    f("qoffset_x", 376, Kind::F64, 1),
    f("qoffset_y", 384, Kind::F64, 1),
    f("qoffset_z", 392, Kind::F64, 1),
    f("srow_x", 400, Kind::F64, 4),
    f("srow_y", 432, Kind::F64, 4),
    f("srow_z", 464, Kind::F64, 4),
    f("slice_code", 496, Kind::I32, 1),
    f("xyzt_units", 500, Kind::I32, 1),
    f("intent_code", 504, Kind::I32, 1),
    f("intent_name", 508, Kind::Text, 16),
    f("dim_info", 524, Kind::U8, 1),
    f("unused_str", 525, Kind::Text, 15),
];

/// Analyze 7.5 as SPM uses it: `funused1` is the scale factor (nibabel's `scl_slope`),
/// `funused2` the intercept (SPM2), and `originator` holds the origin as five int16.
static ANALYZE_FIELDS: &[Field] = &[
    f("sizeof_hdr", 0, Kind::I32, 1),
    f("data_type", 4, Kind::Text, 10),
    f("db_name", 14, Kind::Text, 18),
    f("extents", 32, Kind::I32, 1),
    f("session_error", 36, Kind::I16, 1),
    f("regular", 38, Kind::Text, 1),
    f("hkey_un0", 39, Kind::Text, 1),
    f("dim", 40, Kind::I16, 8),
    f("vox_units", 56, Kind::Text, 4),
    f("cal_units", 60, Kind::Text, 8),
    f("unused1", 68, Kind::I16, 1),
    f("datatype", 70, Kind::I16, 1),
    f("bitpix", 72, Kind::I16, 1),
    f("dim_un0", 74, Kind::I16, 1),
    f("pixdim", 76, Kind::F32, 8),
    f("vox_offset", 108, Kind::F32, 1),
    f("scl_slope", 112, Kind::F32, 1),
    f("scl_inter", 116, Kind::F32, 1),
    f("funused3", 120, Kind::F32, 1),
    f("cal_max", 124, Kind::F32, 1),
    f("cal_min", 128, Kind::F32, 1),
    f("compressed", 132, Kind::F32, 1),
    f("verified", 136, Kind::F32, 1),
    f("glmax", 140, Kind::I32, 1),
    f("glmin", 144, Kind::I32, 1),
    f("descrip", 148, Kind::Text, 80),
    f("aux_file", 228, Kind::Text, 24),
    f("orient", 252, Kind::U8, 1),
    f("origin", 253, Kind::I16, 5),
    f("generated", 263, Kind::Text, 10),
    f("scannum", 273, Kind::Text, 10),
    f("patient_id", 283, Kind::Text, 10),
    f("exp_date", 293, Kind::Text, 10),
    f("exp_time", 303, Kind::Text, 10),
    f("hist_un0", 313, Kind::Text, 3),
    f("views", 316, Kind::I32, 1),
    f("vols_added", 320, Kind::I32, 1),
    f("start_field", 324, Kind::I32, 1),
    f("field_skip", 328, Kind::I32, 1),
    f("omax", 332, Kind::I32, 1),
    f("omin", 336, Kind::I32, 1),
    f("smax", 340, Kind::I32, 1),
    f("smin", 344, Kind::I32, 1),
];

/// NIfTI-2's `eol_check` bytes after the magic: `\r\n\x1a\n`, which catch a file mangled by
/// text-mode transfers.
const EOL_CHECK: [i64; 4] = [13, 10, 26, 10];

/// A field's value, as the CLI and the control protocol exchange it.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Text(Vec<u8>),
}

impl FieldValue {
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        match self {
            FieldValue::Ints(v) if v.len() == 1 => Value::from(v[0]),
            FieldValue::Ints(v) => Value::from(v.clone()),
            FieldValue::Floats(v) if v.len() == 1 => float(v[0]),
            FieldValue::Floats(v) => Value::Array(v.iter().map(|&x| float(x)).collect()),
            FieldValue::Text(b) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                Value::from(String::from_utf8_lossy(&b[..end]).into_owned())
            }
        }
    }
}

/// A value as a user writes it on the command line: numbers comma-separated, text as it is.
impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |items: Vec<String>| items.join(",");
        match self {
            FieldValue::Ints(v) => f.write_str(&join(v.iter().map(i64::to_string).collect())),
            FieldValue::Floats(v) => f.write_str(&join(v.iter().map(f64::to_string).collect())),
            FieldValue::Text(b) => f.write_str(&String::from_utf8_lossy(b)),
        }
    }
}

/// Why a field could not be read or set.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FieldError {
    #[error("unknown header field '{field}' for a {flavor} header")]
    Unknown { field: String, flavor: &'static str },
    #[error("field '{field}' takes {expected}, got '{got}'")]
    BadValue {
        field: String,
        expected: String,
        got: String,
    },
}

/// Why bytes are not a header.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeaderError {
    #[error("file is truncated: {got} bytes, a header needs {needed}")]
    Truncated { got: usize, needed: usize },
    #[error(
        "sizeof_hdr is {0} (little-endian) / {1} (big-endian); a NIfTI-1 or Analyze header \
         has 348 and a NIfTI-2 header 540"
    )]
    BadSizeofHdr(i32, i32),
    #[error("NIfTI-2 header has a bad magic string {0:?}")]
    BadMagic(String),
}

/// A header of one of the three layouts, in the byte order it was read in.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    flavor: Flavor,
    order: ByteOrder,
    bytes: Vec<u8>,
}

impl Header {
    /// Recognizes a header from the start of a file: the layout from `sizeof_hdr` (read in
    /// either byte order) and the magic.
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        if bytes.len() < 4 {
            return Err(HeaderError::Truncated {
                got: bytes.len(),
                needed: 348,
            });
        }
        let raw: [u8; 4] = bytes[..4].try_into().expect("four bytes");
        let (le, be) = (i32::from_le_bytes(raw), i32::from_be_bytes(raw));
        let (size, order) = match (le, be) {
            (348 | 540, _) => (le, ByteOrder::Little),
            (_, 348 | 540) => (be, ByteOrder::Big),
            _ => return Err(HeaderError::BadSizeofHdr(le, be)),
        };
        let needed = size as usize;
        if bytes.len() < needed {
            return Err(HeaderError::Truncated {
                got: bytes.len(),
                needed,
            });
        }
        let flavor = if size == 540 {
            let magic = &bytes[4..12];
            if !(magic == b"n+2\0\r\n\x1a\n" || magic == b"ni2\0\r\n\x1a\n") {
                return Err(HeaderError::BadMagic(
                    String::from_utf8_lossy(magic).into_owned(),
                ));
            }
            Flavor::Nifti2
        } else if &bytes[344..348] == b"n+1\0" || &bytes[344..348] == b"ni1\0" {
            Flavor::Nifti1
        } else {
            Flavor::Analyze
        };
        Ok(Header {
            flavor,
            order,
            bytes: bytes[..needed].to_vec(),
        })
    }

    /// A fresh header with nibabel's defaults: no dims, unit voxels, no scaling, no transform.
    pub fn new(flavor: Flavor, order: ByteOrder) -> Header {
        let mut h = Header {
            flavor,
            order,
            bytes: vec![0; flavor.header_len()],
        };
        h.put_ints("sizeof_hdr", &[flavor.header_len() as i64]);
        match flavor {
            Flavor::Nifti1 => h.put_text("magic", b"n+1\0"),
            Flavor::Nifti2 => {
                h.put_text("magic", b"n+2\0");
                h.put_ints("eol_check", &EOL_CHECK);
            }
            Flavor::Analyze => {
                h.put_ints("extents", &[16384]);
                h.put_text("regular", b"r");
            }
        }
        h.put_ints("dim", &[0, 1, 1, 1, 1, 1, 1, 1]);
        h.put_floats("pixdim", &[1.0; 8]);
        h.put_ints("datatype", &[i64::from(DataType::Float32.code())]);
        h.put_ints("bitpix", &[32]);
        if flavor == Flavor::Analyze {
            h.put_floats("scl_slope", &[1.0]);
        } else {
            h.put_floats("scl_slope", &[f64::NAN]);
            h.put_floats("scl_inter", &[f64::NAN]);
        }
        h
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn order(&self) -> ByteOrder {
        self.order
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the header names a single file (`n+1`, `n+2`) rather than a pair.
    pub fn is_single_file(&self) -> bool {
        match self.flavor {
            Flavor::Nifti1 => &self.bytes[344..348] == b"n+1\0",
            Flavor::Nifti2 => &self.bytes[4..8] == b"n+2\0",
            Flavor::Analyze => false,
        }
    }

    /// Sets the magic to the single-file or the pair form of this layout.
    pub fn set_single_file(&mut self, single: bool) {
        match (self.flavor, single) {
            (Flavor::Nifti1, true) => self.put_text("magic", b"n+1\0"),
            (Flavor::Nifti1, false) => self.put_text("magic", b"ni1\0"),
            (Flavor::Nifti2, true) => self.put_text("magic", b"n+2\0"),
            (Flavor::Nifti2, false) => self.put_text("magic", b"ni2\0"),
            (Flavor::Analyze, _) => {}
        }
    }

    pub fn field_names(&self) -> impl Iterator<Item = &'static str> {
        self.flavor.fields().iter().map(|f| f.name)
    }

    fn field(&self, name: &str) -> Result<&'static Field, FieldError> {
        self.flavor
            .fields()
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| FieldError::Unknown {
                field: name.to_string(),
                flavor: self.flavor.name(),
            })
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.field(name).is_ok()
    }

    /// The fields whose bytes differ from `other`'s (same layout expected; NaN equals NaN).
    pub fn differing_fields(&self, other: &Header) -> Vec<&'static str> {
        if self.flavor != other.flavor || self.order != other.order {
            return self.field_names().collect();
        }
        self.flavor
            .fields()
            .iter()
            .filter(|f| {
                let span = f.offset..f.offset + f.kind.width() * f.count;
                self.bytes[span.clone()] != other.bytes[span]
            })
            .map(|f| f.name)
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<FieldValue, FieldError> {
        let field = self.field(name)?;
        Ok(self.read_field(field))
    }

    fn read_field(&self, field: &Field) -> FieldValue {
        let at = |i: usize| field.offset + i * field.kind.width();
        let b = &self.bytes;
        let le = self.order == ByteOrder::Little;
        macro_rules! num {
            ($t:ty, $n:expr, $i:expr) => {{
                let raw: [u8; $n] = b[at($i)..at($i) + $n].try_into().expect("field width");
                if le {
                    <$t>::from_le_bytes(raw)
                } else {
                    <$t>::from_be_bytes(raw)
                }
            }};
        }
        let n = field.count;
        match field.kind {
            Kind::Text => FieldValue::Text(b[field.offset..field.offset + n].to_vec()),
            Kind::U8 => FieldValue::Ints((0..n).map(|i| i64::from(b[at(i)])).collect()),
            Kind::I16 => FieldValue::Ints((0..n).map(|i| i64::from(num!(i16, 2, i))).collect()),
            Kind::I32 => FieldValue::Ints((0..n).map(|i| i64::from(num!(i32, 4, i))).collect()),
            Kind::I64 => FieldValue::Ints((0..n).map(|i| num!(i64, 8, i)).collect()),
            Kind::F32 => FieldValue::Floats((0..n).map(|i| f64::from(num!(f32, 4, i))).collect()),
            Kind::F64 => FieldValue::Floats((0..n).map(|i| num!(f64, 8, i)).collect()),
        }
    }

    /// Sets a field, checking that the value has the field's count and fits its type.
    pub fn set(&mut self, name: &str, value: &FieldValue) -> Result<(), FieldError> {
        let field = self.field(name)?;
        let bad = |expected: String| FieldError::BadValue {
            field: name.to_string(),
            expected,
            got: value.to_string(),
        };
        let count_word = |n: usize| {
            if n == 1 {
                "one value".to_string()
            } else {
                format!("{n} values")
            }
        };
        match (field.kind, value) {
            (Kind::Text, FieldValue::Text(t)) => {
                if t.len() > field.count {
                    return Err(bad(format!("at most {} bytes of text", field.count)));
                }
                self.put_text(name, t);
            }
            (Kind::Text, _) => return Err(bad("text".into())),
            (Kind::F32 | Kind::F64, FieldValue::Floats(v)) => {
                if v.len() != field.count {
                    return Err(bad(count_word(field.count)));
                }
                self.write_floats(field, v);
            }
            (Kind::F32 | Kind::F64, FieldValue::Ints(v)) => {
                if v.len() != field.count {
                    return Err(bad(count_word(field.count)));
                }
                let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                self.write_floats(field, &v);
            }
            (_, FieldValue::Ints(v)) => {
                if v.len() != field.count {
                    return Err(bad(count_word(field.count)));
                }
                let (lo, hi) = match field.kind {
                    Kind::U8 => (0, 255),
                    Kind::I16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                    Kind::I32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
                    _ => (i64::MIN, i64::MAX),
                };
                if v.iter().any(|&x| x < lo || x > hi) {
                    return Err(bad(format!("integers from {lo} to {hi}")));
                }
                self.write_ints(field, v);
            }
            (_, _) => return Err(bad("integers".into())),
        }
        Ok(())
    }

    /// Parses text as a field's value (`1.5`, `1,2,3`, or text for string fields) and sets it.
    pub fn set_from_str(&mut self, name: &str, text: &str) -> Result<(), FieldError> {
        let field = self.field(name)?;
        let value = parse_value(field, text)?;
        self.set(name, &value)
    }

    fn write_floats(&mut self, field: &Field, v: &[f64]) {
        let le = self.order == ByteOrder::Little;
        for (i, &x) in v.iter().enumerate() {
            let at = field.offset + i * field.kind.width();
            match field.kind {
                Kind::F32 => {
                    let raw = if le {
                        (x as f32).to_le_bytes()
                    } else {
                        (x as f32).to_be_bytes()
                    };
                    self.bytes[at..at + 4].copy_from_slice(&raw);
                }
                _ => {
                    let raw = if le { x.to_le_bytes() } else { x.to_be_bytes() };
                    self.bytes[at..at + 8].copy_from_slice(&raw);
                }
            }
        }
    }

    fn write_ints(&mut self, field: &Field, v: &[i64]) {
        let le = self.order == ByteOrder::Little;
        for (i, &x) in v.iter().enumerate() {
            let at = field.offset + i * field.kind.width();
            let w = field.kind.width();
            let raw: Vec<u8> = match field.kind {
                Kind::U8 => vec![x as u8],
                Kind::I16 if le => (x as i16).to_le_bytes().to_vec(),
                Kind::I16 => (x as i16).to_be_bytes().to_vec(),
                Kind::I32 if le => (x as i32).to_le_bytes().to_vec(),
                Kind::I32 => (x as i32).to_be_bytes().to_vec(),
                _ if le => x.to_le_bytes().to_vec(),
                _ => x.to_be_bytes().to_vec(),
            };
            self.bytes[at..at + w].copy_from_slice(&raw);
        }
    }

    /// Writes a field this module knows exists; for internal use with literal names.
    fn put_ints(&mut self, name: &str, v: &[i64]) {
        let field = self.field(name).expect("known field");
        self.write_ints(field, v);
    }

    fn put_floats(&mut self, name: &str, v: &[f64]) {
        let field = self.field(name).expect("known field");
        self.write_floats(field, v);
    }

    fn put_text(&mut self, name: &str, t: &[u8]) {
        let field = self.field(name).expect("known field");
        let dst = &mut self.bytes[field.offset..field.offset + field.count];
        dst.fill(0);
        dst[..t.len()].copy_from_slice(t);
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        match self.get(name) {
            Ok(FieldValue::Ints(v)) => v,
            _ => Vec::new(),
        }
    }

    fn floats(&self, name: &str) -> Vec<f64> {
        match self.get(name) {
            Ok(FieldValue::Floats(v)) => v,
            _ => Vec::new(),
        }
    }

    fn int(&self, name: &str) -> i64 {
        self.ints(name).first().copied().unwrap_or(0)
    }

    fn float(&self, name: &str) -> f64 {
        self.floats(name).first().copied().unwrap_or(0.0)
    }

    /// `dim[0]`, clamped to the 1..=7 that the format allows.
    pub fn ndim(&self) -> usize {
        self.int("dim").clamp(0, 7) as usize
    }

    /// The raw `dim[1..=dim[0]]`; may hold zeros or negatives in a bad file.
    pub fn raw_shape(&self) -> Vec<i64> {
        let dim = self.ints("dim");
        dim[1..=self.ndim()].to_vec()
    }

    /// The image shape, nibabel's `img.shape`. Errors if a dimension is not positive.
    pub fn shape(&self) -> Result<Vec<u64>, String> {
        let dim0 = self.int("dim");
        if !(0..=7).contains(&dim0) {
            return Err(format!("dim[0] is {dim0}; it must be from 0 to 7"));
        }
        self.raw_shape()
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                u64::try_from(d)
                    .ok()
                    .filter(|&d| d > 0)
                    .ok_or_else(|| format!("dim[{}] is {d}; dimensions must be positive", i + 1))
            })
            .collect()
    }

    /// Sets `dim` from a shape, keeping unused entries at 1 as nibabel does.
    pub fn set_shape(&mut self, shape: &[u64]) -> Result<(), FieldError> {
        let mut dim = vec![shape.len() as i64];
        dim.extend(shape.iter().map(|&d| d as i64));
        dim.resize(8, 1);
        self.set("dim", &FieldValue::Ints(dim))
    }

    pub fn datatype(&self) -> Result<DataType, String> {
        DataType::from_code(self.int("datatype"))
    }

    /// Sets `datatype` and `bitpix` together.
    pub fn set_datatype(&mut self, dtype: DataType) {
        self.put_ints("datatype", &[i64::from(dtype.code())]);
        self.put_ints("bitpix", &[i64::from(dtype.bitpix())]);
    }

    /// The voxel count and the data byte count, checked for overflow.
    pub fn data_len(&self) -> Result<u64, String> {
        let dtype = self.datatype()?;
        let shape = self.shape()?;
        shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                format!("dims {shape:?} of {dtype} overflow: the data would exceed 2^64 bytes")
            })
    }

    /// `vox_offset` as stored; a float in NIfTI-1 and Analyze.
    pub fn vox_offset_raw(&self) -> f64 {
        match self.flavor {
            Flavor::Nifti2 => self.int("vox_offset") as f64,
            _ => self.float("vox_offset"),
        }
    }

    pub fn set_vox_offset(&mut self, offset: u64) {
        match self.flavor {
            Flavor::Nifti2 => self.put_ints("vox_offset", &[offset as i64]),
            _ => self.put_floats("vox_offset", &[offset as f64]),
        }
    }

    /// nibabel's `get_slope_inter()`: `None` when the slope is 0 or not finite, meaning no
    /// scaling.
    pub fn slope_inter(&self) -> Option<(f64, f64)> {
        let slope = self.float("scl_slope");
        if slope == 0.0 || !slope.is_finite() {
            if self.flavor == Flavor::Analyze {
                return self.spm2_calibration_scaling();
            }
            return None;
        }
        let inter = self.float("scl_inter");
        let inter = if inter.is_finite() { inter } else { 0.0 };
        Some((slope, inter))
    }

    /// SPM2's fallback for Analyze without a scale factor: the scaling that maps the stored
    /// range (`glmin`..`glmax`) onto the calibrated one (`cal_min`..`cal_max`).
    fn spm2_calibration_scaling(&self) -> Option<(f64, f64)> {
        let unscaled = (self.int("glmax") - self.int("glmin")) as f64;
        let scaled = self.float("cal_max") - self.float("cal_min");
        if unscaled == 0.0 || scaled == 0.0 || !scaled.is_finite() {
            return None;
        }
        let slope = scaled / unscaled;
        Some((
            slope,
            self.float("cal_min") - slope * self.int("glmin") as f64,
        ))
    }

    pub fn set_slope_inter(&mut self, scaling: Option<(f64, f64)>) {
        match (scaling, self.flavor) {
            (Some((s, i)), _) => {
                self.put_floats("scl_slope", &[s]);
                self.put_floats("scl_inter", &[i]);
            }
            (None, Flavor::Analyze) => {
                self.put_floats("scl_slope", &[1.0]);
                self.put_floats("scl_inter", &[0.0]);
            }
            (None, _) => {
                self.put_floats("scl_slope", &[f64::NAN]);
                self.put_floats("scl_inter", &[f64::NAN]);
            }
        }
    }

    /// `pixdim`, all eight entries.
    pub fn pixdim(&self) -> Vec<f64> {
        self.floats("pixdim")
    }

    /// nibabel's `get_zooms()`: the voxel sizes of the image's dimensions.
    pub fn zooms(&self) -> Vec<f64> {
        let pixdim = self.pixdim();
        (1..=self.ndim()).map(|i| pixdim[i].abs()).collect()
    }

    pub fn qform_code(&self) -> i64 {
        if self.flavor == Flavor::Analyze {
            0
        } else {
            self.int("qform_code")
        }
    }

    pub fn sform_code(&self) -> i64 {
        if self.flavor == Flavor::Analyze {
            0
        } else {
            self.int("sform_code")
        }
    }

    pub fn descrip(&self) -> String {
        match self.get("descrip") {
            Ok(v) => v.to_json().as_str().unwrap_or_default().to_string(),
            Err(_) => String::new(),
        }
    }

    /// The affine stored as quaternion, offsets and pixdim (whatever `qform_code` says).
    pub fn qform_affine(&self) -> Affine {
        let pixdim = self.pixdim();
        let threshold = match self.flavor {
            Flavor::Nifti2 => affine::NIFTI2_QUATERNION_THRESHOLD,
            _ => affine::NIFTI1_QUATERNION_THRESHOLD,
        };
        affine::quaternion_to_affine_with_threshold(
            [
                self.float("quatern_b"),
                self.float("quatern_c"),
                self.float("quatern_d"),
            ],
            [
                self.float("qoffset_x"),
                self.float("qoffset_y"),
                self.float("qoffset_z"),
            ],
            [pixdim[1], pixdim[2], pixdim[3]],
            pixdim[0],
            threshold,
        )
    }

    /// The affine stored in `srow_x/y/z`.
    pub fn sform_affine(&self) -> Affine {
        let mut a = affine::IDENTITY;
        for (row, name) in ["srow_x", "srow_y", "srow_z"].iter().enumerate() {
            let v = self.floats(name);
            a[row].copy_from_slice(&v[..4]);
        }
        a
    }

    /// Writes an affine as the sform with the given code.
    pub fn set_sform(&mut self, a: &Affine, code: i64) {
        for (row, name) in ["srow_x", "srow_y", "srow_z"].iter().enumerate() {
            self.put_floats(name, &a[row]);
        }
        self.put_ints("sform_code", &[code]);
    }

    /// Writes an affine as the qform with the given code; the voxel sizes go to pixdim and
    /// any shear is dropped, as the quaternion cannot hold it.
    pub fn set_qform(&mut self, a: &Affine, code: i64) {
        let q = affine::affine_to_quaternion(a);
        self.put_floats("quatern_b", &[q.quatern[0]]);
        self.put_floats("quatern_c", &[q.quatern[1]]);
        self.put_floats("quatern_d", &[q.quatern[2]]);
        self.put_floats("qoffset_x", &[q.offset[0]]);
        self.put_floats("qoffset_y", &[q.offset[1]]);
        self.put_floats("qoffset_z", &[q.offset[2]]);
        let mut pixdim = self.pixdim();
        pixdim[0] = q.qfac;
        pixdim[1..4].copy_from_slice(&q.zooms);
        self.put_floats("pixdim", &pixdim);
        self.put_ints("qform_code", &[code]);
    }

    /// The SPM origin field of an Analyze header (1-based voxel coordinates).
    pub fn analyze_origin(&self) -> Option<[i64; 3]> {
        if self.flavor != Flavor::Analyze {
            return None;
        }
        let o = self.ints("origin");
        Some([o[0], o[1], o[2]])
    }

    /// nibabel's `get_best_affine()` for this header alone (an SPM `.mat` sidecar, when there
    /// is one, overrides it for Analyze; see [`super::io`]).
    pub fn best_affine(&self) -> Affine {
        match self.flavor {
            Flavor::Analyze => {
                let shape: Vec<i64> = self.raw_shape();
                affine::spm_analyze_affine(&shape, &self.pixdim(), self.analyze_origin())
            }
            _ if self.sform_code() > 0 => self.sform_affine(),
            _ if self.qform_code() > 0 => self.qform_affine(),
            _ => affine::pixdim_affine(&self.raw_shape(), &self.pixdim()),
        }
    }

    /// The same image description in another layout, field by field, as nibabel's
    /// `from_header` does. Fields the target lacks are dropped; the magic names a single file.
    pub fn convert_to(&self, flavor: Flavor) -> Header {
        if flavor == self.flavor {
            return self.clone();
        }
        let mut out = Header::new(flavor, self.order);
        let skip = ["sizeof_hdr", "magic", "eol_check", "vox_offset"];
        for field in self.flavor.fields() {
            if skip.contains(&field.name) || !out.has_field(field.name) {
                continue;
            }
            let target = out.field(field.name).expect("checked");
            if target.count != field.count {
                continue;
            }
            let value = self.read_field(field);
            match (&value, target.kind) {
                (FieldValue::Text(_), Kind::Text) => {}
                (FieldValue::Text(_), _) | (_, Kind::Text) => continue,
                _ => {}
            }
            // Values that do not fit the target (a NIfTI-2 dim beyond int16) are left at the
            // default; the caller's shape check reports them.
            let _ = out.set(field.name, &value);
        }
        if self.flavor == Flavor::Analyze {
            let scaling = self.slope_inter();
            out.set_slope_inter(scaling);
            out.set_sform(&self.best_affine(), 2);
            out.set_qform(&self.best_affine(), 0);
            out.put_ints("qform_code", &[0]);
        }
        out
    }

    /// Every field as JSON, keyed by nibabel's names.
    pub fn fields_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.flavor
            .fields()
            .iter()
            .map(|f| (f.name.to_string(), self.read_field(f).to_json()))
            .collect()
    }
}

fn parse_value(field: &Field, text: &str) -> Result<FieldValue, FieldError> {
    let bad = |expected: &str| FieldError::BadValue {
        field: field.name.to_string(),
        expected: expected.to_string(),
        got: text.to_string(),
    };
    match field.kind {
        Kind::Text => Ok(FieldValue::Text(text.as_bytes().to_vec())),
        Kind::F32 | Kind::F64 => text
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map(FieldValue::Floats)
            .map_err(|_| bad("numbers separated by commas")),
        _ => text
            .split(',')
            .map(|s| s.trim().parse::<i64>())
            .collect::<Result<Vec<_>, _>>()
            .map(FieldValue::Ints)
            .map_err(|_| bad("integers separated by commas")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts_tile(fields: &[Field], len: usize) {
        let mut end = 0;
        for f in fields {
            assert_eq!(f.offset, end, "gap or overlap before {}", f.name);
            end = f.offset + f.kind.width() * f.count;
        }
        assert_eq!(end, len);
    }

    #[test]
    fn field_tables_cover_each_header_exactly() {
        layouts_tile(NIFTI1_FIELDS, 348);
        layouts_tile(ANALYZE_FIELDS, 348);
        layouts_tile(NIFTI2_FIELDS, 540);
    }

    #[test]
    fn parse_detects_layout_and_order() {
        for flavor in [Flavor::Analyze, Flavor::Nifti1, Flavor::Nifti2] {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                let h = Header::new(flavor, order);
                let back = Header::parse(h.as_bytes()).unwrap();
                assert_eq!((back.flavor(), back.order()), (flavor, order));
                assert_eq!(back, h);
            }
        }
    }

    #[test]
    fn wrong_sizeof_hdr_is_refused() {
        let mut bytes = Header::new(Flavor::Nifti1, ByteOrder::Little)
            .as_bytes()
            .to_vec();
        bytes[0] = 0x50;
        let err = Header::parse(&bytes).unwrap_err();
        assert!(err.to_string().contains("sizeof_hdr is 336"), "{err}");
    }

    #[test]
    fn set_checks_count_and_range() {
        let mut h = Header::new(Flavor::Nifti1, ByteOrder::Big);
        assert!(h.set_from_str("sform_code", "70000").is_err());
        assert!(h.set_from_str("srow_x", "1,2").is_err());
        assert!(h.set_from_str("nonsense", "1").is_err());
        h.set_from_str("srow_x", "1,2,3,4").unwrap();
        assert_eq!(
            h.get("srow_x").unwrap(),
            FieldValue::Floats(vec![1.0, 2.0, 3.0, 4.0])
        );
        h.set_from_str("descrip", "hello").unwrap();
        assert_eq!(h.descrip(), "hello");
    }

    #[test]
    fn a_refused_value_is_quoted_as_the_user_wrote_it() {
        let mut h = Header::new(Flavor::Nifti1, ByteOrder::Little);
        let err = h.set_from_str("srow_x", "1,2.5").unwrap_err().to_string();
        assert_eq!(err, "field 'srow_x' takes 4 values, got '1,2.5'");
        let err = h
            .set_from_str("sform_code", "70000")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("got '70000'"), "{err}");
    }
}
