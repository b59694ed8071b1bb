//! SPM's `.mat` sidecar: the affine of an Analyze image, stored as a MATLAB file next to it.

use std::io::Read;

use super::affine::{Affine, matmul};

/// Decompressed bytes read from one `miCOMPRESSED` element at most. The variables wanted are
/// tiny; the cap only keeps a hostile stream from inflating without bound.
const MAX_INFLATED: u64 = 1 << 20;

/// The affine an SPM `.mat` sidecar gives, as nibabel's `Spm99AnalyzeImage` applies it
/// (0-based voxel coordinates). `Ok(None)` when the file holds neither `mat` nor `M`.
pub fn read_sidecar_affine(bytes: &[u8]) -> Result<Option<Affine>, String> {
    // nibabel leaves the header's affine alone for an empty sidecar.
    if bytes.is_empty() {
        return Ok(None);
    }
    let vars = if bytes.len() >= 4 && !bytes[..4].contains(&0) {
        read_level5(bytes)?
    } else {
        read_level4(bytes)?
    };
    // `mat` already holds SPM's x flip; `M` does not, and Analyze images are x-flipped by
    // default.
    let affine = match (vars.mat, vars.m) {
        (Some(mat), _) => mat,
        (None, Some(m)) => {
            let mut flipped = m;
            flipped[0] = m[0].map(|v| -v);
            flipped
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(matmul(&affine, &translation(1.0))))
}

/// The bytes of a `.mat` sidecar for an affine (0-based), as nibabel writes it.
pub fn write_sidecar(affine: &Affine) -> Vec<u8> {
    let from_111 = translation(-1.0);
    let mut flipped = *affine;
    flipped[0] = affine[0].map(|v| -v);
    let m = matmul(&flipped, &from_111);
    let mat = matmul(affine, &from_111);
    let mut out = Vec::with_capacity(2 * (20 + 4 + 128));
    // Level 4, as scipy's `savemat(format='4')` writes it for nibabel: little-endian doubles
    // (type 0), 4x4, real, then the NUL-terminated name and the columns in order.
    for (name, a) in [("M", &m), ("mat", &mat)] {
        for v in [0_i32, 4, 4, 0, name.len() as i32 + 1] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        for col in 0..4 {
            for row in a {
                out.extend_from_slice(&row[col].to_le_bytes());
            }
        }
    }
    out
}

fn translation(t: f64) -> Affine {
    let mut a = super::affine::IDENTITY;
    for row in a.iter_mut().take(3) {
        row[3] = t;
    }
    a
}

/// The candidate variables; a later variable of the same name replaces an earlier one, as in
/// `scipy.io.loadmat`'s dict.
#[derive(Default)]
struct Found {
    mat: Option<Affine>,
    m: Option<Affine>,
}

impl Found {
    fn wants(name: &[u8]) -> bool {
        name == b"mat" || name == b"M"
    }

    fn put(&mut self, name: &[u8], a: Affine) {
        if name == b"mat" {
            self.mat = Some(a);
        } else {
            self.m = Some(a);
        }
    }
}

fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// A 4x4 affine from the first 16 column-major values of a 4x4(xN...) array.
fn affine_from_columns(name: &[u8], dims: &[usize], values: &[f64]) -> Result<Affine, String> {
    if dims.len() < 2 || dims[0] != 4 || dims[1] != 4 || values.len() < 16 {
        return Err(format!(
            "variable '{}' has shape {dims:?}; a 4x4 matrix is needed",
            display(name)
        ));
    }
    let mut a = [[0.0; 4]; 4];
    for (k, v) in values[..16].iter().enumerate() {
        a[k % 4][k / 4] = *v;
    }
    Ok(a)
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    endian: Endian,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let rest = self.bytes.len() - self.pos;
        if n > rest {
            return Err(format!(
                "truncated .mat file: {what} needs {n} bytes at offset {}, {rest} left",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b: [u8; 4] = self.take(4, what)?.try_into().unwrap_or_default();
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

/// Numbers of one stored type, decoded to f64.
fn decode(bytes: &[u8], size: usize, endian: Endian, conv: fn([u8; 8], Endian) -> f64) -> Vec<f64> {
    bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            conv(b, endian)
        })
        .collect()
}

macro_rules! converter {
    ($t:ty, $n:expr) => {
        |b: [u8; 8], e: Endian| -> f64 {
            let a: [u8; $n] = b[..$n].try_into().unwrap_or_default();
            (match e {
                Endian::Little => <$t>::from_le_bytes(a),
                Endian::Big => <$t>::from_be_bytes(a),
            }) as f64
        }
    };
}

type Conv = fn([u8; 8], Endian) -> f64;

fn level4_reader(p: u32) -> Option<(usize, Conv)> {
    Some(match p {
        0 => (8, converter!(f64, 8)),
        1 => (4, converter!(f32, 4)),
        2 => (4, converter!(i32, 4)),
        3 => (2, converter!(i16, 2)),
        4 => (2, converter!(u16, 2)),
        5 => (1, converter!(u8, 1)),
        _ => return None,
    })
}

fn level5_reader(ty: u32) -> Option<(usize, Conv)> {
    Some(match ty {
        1 => (1, converter!(i8, 1)),
        2 => (1, converter!(u8, 1)),
        3 => (2, converter!(i16, 2)),
        4 => (2, converter!(u16, 2)),
        5 => (4, converter!(i32, 4)),
        6 => (4, converter!(u32, 4)),
        7 => (4, converter!(f32, 4)),
        9 => (8, converter!(f64, 8)),
        12 => (8, converter!(i64, 8)),
        13 => (8, converter!(u64, 8)),
        _ => return None,
    })
}

/// MATLAB Level 4: a run of (header, name, real part, imaginary part) records.
fn read_level4(bytes: &[u8]) -> Result<Found, String> {
    // scipy decides the byte order once, from the first record's type word.
    let first = i32::from_le_bytes(
        bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated .mat file: shorter than a Level 4 header".to_string())?,
    );
    let endian = if (0..=5000).contains(&first) {
        Endian::Little
    } else {
        Endian::Big
    };
    let mut c = Cursor {
        bytes,
        pos: 0,
        endian,
    };
    let mut found = Found::default();
    while !c.at_end() {
        let mopt = c.u32("variable header")?;
        let mrows = c.u32("variable header")? as usize;
        let ncols = c.u32("variable header")? as usize;
        let imagf = c.u32("variable header")?;
        let namlen = c.u32("variable header")? as usize;
        let name_bytes = c.take(namlen, "variable name")?;
        let name: Vec<u8> = name_bytes.iter().copied().filter(|&b| b != 0).collect();
        let (p, t) = ((mopt / 10) % 10, mopt % 10);
        if mopt >= 5000 || (mopt / 100) % 10 != 0 {
            return Err(format!("not a MATLAB .mat file (Level 4 type word {mopt})"));
        }
        let (size, conv) = level4_reader(p).ok_or_else(|| {
            format!(
                "variable '{}': unknown Level 4 precision {p}",
                display(&name)
            )
        })?;
        let parts = if imagf != 0 { 2 } else { 1 };
        let n = mrows
            .checked_mul(ncols)
            .and_then(|n| n.checked_mul(size * parts))
            .ok_or_else(|| format!("variable '{}': size overflows", display(&name)))?;
        let data = c.take(n, "variable data")?;
        if !Found::wants(&name) {
            continue;
        }
        if t != 0 || imagf != 0 {
            return Err(format!(
                "variable '{}' is not a real numeric matrix",
                display(&name)
            ));
        }
        let values = decode(&data[..data.len().min(16 * size)], size, endian, conv);
        found.put(&name, affine_from_columns(&name, &[mrows, ncols], &values)?);
    }
    Ok(found)
}

const MI_INT8: u32 = 1;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// One data element: its type and contents.
fn element<'a>(c: &mut Cursor<'a>, what: &str) -> Result<(u32, &'a [u8]), String> {
    let word = c.u32(what)?;
    // The small data element format packs a size of at most 4 into the tag's upper half.
    if word >> 16 != 0 {
        let n = (word >> 16) as usize;
        let data = c.take(4, what)?;
        if n > 4 {
            return Err(format!("{what}: small element of {n} bytes"));
        }
        return Ok((word & 0xffff, &data[..n]));
    }
    let n = c.u32(what)? as usize;
    let data = c.take(n, what)?;
    if word != MI_COMPRESSED {
        let pad = (8 - n % 8) % 8;
        // MATLAB pads to 8 bytes, but a file may end right after the last element's data.
        let pad = pad.min(c.bytes.len() - c.pos);
        c.take(pad, what)?;
    }
    Ok((word, data))
}

/// MATLAB Level 5 (v6, v7): a 128-byte header, then data elements, each possibly
/// zlib-compressed.
fn read_level5(bytes: &[u8]) -> Result<Found, String> {
    if bytes.len() < 128 {
        return Err(format!(
            "truncated .mat file: {} bytes, shorter than its 128-byte header",
            bytes.len()
        ));
    }
    let (version, endian) = match &bytes[126..128] {
        b"IM" => (u16::from_le_bytes([bytes[124], bytes[125]]), Endian::Little),
        b"MI" => (u16::from_be_bytes([bytes[124], bytes[125]]), Endian::Big),
        _ => return Err("not a MATLAB .mat file (no endian mark in the header)".to_string()),
    };
    match version {
        0x0100 => {}
        0x0200 => return Err("MATLAB v7.3 (HDF5) .mat files are not supported".to_string()),
        v => return Err(format!("unknown MATLAB .mat version {v:#06x}")),
    }
    let mut c = Cursor {
        bytes,
        pos: 128,
        endian,
    };
    let mut found = Found::default();
    while !c.at_end() {
        let (ty, data) = element(&mut c, "data element")?;
        match ty {
            MI_MATRIX => read_matrix(data, endian, true, &mut found)?,
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(data)
                    .take(MAX_INFLATED)
                    .read_to_end(&mut inflated)
                    .map_err(|e| format!("compressed element: {e}"))?;
                let complete = inflated.len() < MAX_INFLATED as usize;
                let mut inner = Cursor {
                    bytes: &inflated,
                    pos: 0,
                    endian,
                };
                let (ty, data) = element(&mut inner, "compressed data element")?;
                if ty == MI_MATRIX {
                    read_matrix(data, endian, complete, &mut found)?;
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// An `miMATRIX` element: array flags, dimensions, name, real part (and more). `complete` is
/// false when the element was cut at [`MAX_INFLATED`]; only a wanted variable then fails.
fn read_matrix(
    data: &[u8],
    endian: Endian,
    complete: bool,
    found: &mut Found,
) -> Result<(), String> {
    let mut c = Cursor {
        bytes: data,
        pos: 0,
        endian,
    };
    let (ty, flags) = element(&mut c, "array flags")?;
    if ty != MI_UINT32 || flags.len() < 4 {
        return Err("array flags: not 8 bytes of miUINT32".to_string());
    }
    let mut fc = Cursor {
        bytes: flags,
        pos: 0,
        endian,
    };
    let flags = fc.u32("array flags")?;
    let (ty, dims) = element(&mut c, "array dimensions")?;
    if ty != MI_INT32 {
        return Err(format!("array dimensions: type {ty}, expected miINT32"));
    }
    let mut dc = Cursor {
        bytes: dims,
        pos: 0,
        endian,
    };
    let dims: Vec<usize> = (0..dims.len() / 4)
        .map(|_| dc.u32("array dimensions").map(|d| d as usize))
        .collect::<Result<_, _>>()?;
    let (ty, name) = element(&mut c, "array name")?;
    if ty != MI_INT8 {
        return Err(format!("array name: type {ty}, expected miINT8"));
    }
    if !Found::wants(name) {
        return Ok(());
    }
    if !complete {
        return Err(format!(
            "variable '{}' is larger than {MAX_INFLATED} bytes",
            display(name)
        ));
    }
    let class = flags & 0xff;
    let is_complex = flags & 0x0800 != 0;
    // mxDOUBLE_CLASS (6) to mxUINT64_CLASS (15) are the numeric arrays.
    if !(6..=15).contains(&class) || is_complex {
        return Err(format!(
            "variable '{}' is not a real numeric array",
            display(name)
        ));
    }
    let (ty, real) = element(&mut c, "array data")?;
    let (size, conv) = level5_reader(ty)
        .ok_or_else(|| format!("variable '{}': unknown data type {ty}", display(name)))?;
    let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(real.len() / size) || real.len() % size != 0 {
        return Err(format!(
            "variable '{}': {} bytes of data do not fit shape {dims:?}",
            display(name),
            real.len()
        ));
    }
    let values = decode(&real[..real.len().min(16 * size)], size, endian, conv);
    found.put(name, affine_from_columns(name, &dims, &values)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::affine::max_abs_diff;
    use super::*;

    // Written by scipy.io.savemat (v4, v5, v5 compressed) or by hand for big-endian v4; the
    // expected affines are what nibabel's Spm99AnalyzeImage loads next to each.
    #[rustfmt::skip]
    mod data {
        pub const V4_MAT_ONLY: &str = "00000000040000000400000000000000040000006d61740000000000000000c09a9999999999a93f000000000000000000000000000000009a9999999999b93f00000000000000409a9999999999c9bf00000000000000000000000000000000333333333333d33f00000000000004400000000000000000000000000000574000000000001060c000000000009051c0000000000000f03f";
        pub const V5_M_ONLY: &str = "4d41544c414220352e30204d41542d66696c6520506c6174666f726d3a20706f7369782c2043726561746564206f6e3a20576564204e6f762032352032303a31373a343920323032360000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001494d0e000000b00000000600000008000000060000000000000005000000080000000400000004000000010001004d0000000900000080000000000000000000f83f00000000000000009a9999999999b93f00000000000000000000000000000000000000000000fc3f000000000000000000000000000000009a9999999999c93f00000000000000000000000000000840000000000000000000000000000054c00000000000805bc000000000000049c0000000000000f03f";
        pub const V5_COMPRESSED_BOTH: &str = "4d41544c414220352e30204d41542d66696c6520506c6174666f726d3a20706f7369782c2043726561746564206f6e3a20576564204e6f762032352032303a31373a343920323032360000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001494d0f0000002b000000789ce36360603000623620e600621606086085f2198198194cb330e4e597a40a0079c505b90c0028ce03800f0000004b000000789ce3636060d800c46c40cc01a5418015ca6781624620f405d29c40dcc000033fec61ac59334160279c8f0afe608843d49f4413e77040e5871c00530dd1109ac1134a7fb0070062ae128f0f00000056000000789ce3636060d800c46c40cc01a5418015ca67816246066686dcc412064e20bb81010e0ecc9a09022bed19d000447c274cdc01c23fb91f5d9d31185c86aa637140950d87f005120e80e90981109ae1833d00f84719030f0000005e000000789ce3636060b801c46c40cc01a5418015ca67046211280d12cb2fc9482d02d29c40bc80011d7cb087321c201407941680d222505a024acb40690528ad04a555a0b41a94d680d25a505a074aeb416903286d08a58da0b4b1030034c70bfb";
        pub const V5_INT16_M: &str = "4d41544c414220352e30204d41542d66696c6520506c6174666f726d3a20706f7369782c2043726561746564206f6e3a20576564204e6f762032352032303a31373a343920323032360000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001494d0e0000005000000006000000080000000a0000000000000005000000080000000400000004000000010001004d0000000300000020000000020000000000000000000200000000000000000002000000a6ff82ffb8ff0100";
        pub const V5_MAT_3D: &str = "4d41544c414220352e30204d41542d66696c6520506c6174666f726d3a20706f7369782c2043726561746564206f6e3a20576564204e6f762032352032303a31373a343920323032360000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001494d0f00000078000000789ce3636060b06064606003d21c0c101a04588198078859a098092acec8c0cc909b58c2c009e1c0c08159334160a53d031a8088ef84893b40f827f7a3ab330683cb50752c0ea8b2e110be40c201303d211042337c80aaff01b717cd3e34f00787fb4ea28973a0d91f02b1af211a6aaf27dc7e00c48e28e2";
        pub const V4_BIG_ENDIAN_M: &str = "000003e8000000040000000400000000000000024d003ff800000000000000000000000000003fb999999999999a000000000000000000000000000000003ffc000000000000000000000000000000000000000000003fc999999999999a000000000000000040080000000000000000000000000000c054000000000000c05b800000000000c0490000000000003ff0000000000000";
        pub const NIBABEL_WRITTEN: &str = "00000000040000000400000000000000020000004d00666666666666fe3f333333333333c33f9a9999999999a93f00000000000000009a9999999999c9bfcdcccccccccc0040000000000000d03f00000000000000009a9999999999b9bf333333333333d3bf3333333333330340000000000000000066666666666656c0cdcccccccc7c5ec09a99999999994fc0000000000000f03f00000000040000000400000000000000040000006d617400666666666666febf333333333333c33f9a9999999999a93f00000000000000009a9999999999c93fcdcccccccccc0040000000000000d03f00000000000000009a9999999999b93f333333333333d3bf333333333333034000000000000000006666666666665640cdcccccccc7c5ec09a99999999994fc0000000000000f03f";
    }
    use data::*;

    #[rustfmt::skip]
    const NIBABEL_LOADS: [(&str, &str, Affine); 6] = [
        ("V4_MAT_ONLY", V4_MAT_ONLY, [[-2.0, 0.1, 0.0, 90.1], [0.05, 2.0, 0.3, -126.15], [0.0, -0.2, 2.5, -67.95], [0.0, 0.0, 0.0, 1.0]]),
        ("V5_M_ONLY", V5_M_ONLY, [[-1.5, 0.0, -0.2, 78.3], [0.0, 1.75, 0.0, -108.25], [0.1, 0.0, 3.0, -46.9], [0.0, 0.0, 0.0, 1.0]]),
        ("V5_COMPRESSED_BOTH", V5_COMPRESSED_BOTH, [[-2.0, 0.1, 0.0, 90.1], [0.05, 2.0, 0.3, -126.15], [0.0, -0.2, 2.5, -67.95], [0.0, 0.0, 0.0, 1.0]]),
        ("V5_INT16_M", V5_INT16_M, [[-2.0, 0.0, 0.0, 88.0], [0.0, 2.0, 0.0, -124.0], [0.0, 0.0, 2.0, -70.0], [0.0, 0.0, 0.0, 1.0]]),
        ("V5_MAT_3D", V5_MAT_3D, [[-2.0, 0.1, 0.0, 90.1], [0.05, 2.0, 0.3, -126.15], [0.0, -0.2, 2.5, -67.95], [0.0, 0.0, 0.0, 1.0]]),
        ("V4_BIG_ENDIAN_M", V4_BIG_ENDIAN_M, [[-1.5, 0.0, -0.2, 78.3], [0.0, 1.75, 0.0, -108.25], [0.1, 0.0, 3.0, -46.9], [0.0, 0.0, 0.0, 1.0]]),
    ];

    #[rustfmt::skip]
    const WRITTEN_AFFINE: Affine = [[-1.9, 0.2, 0.1, 88.0], [0.15, 2.1, -0.3, -120.0], [0.05, 0.25, 2.4, -60.5], [0.0, 0.0, 0.0, 1.0]];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn reads_what_nibabel_reads() {
        for (name, hex, want) in NIBABEL_LOADS {
            let got = read_sidecar_affine(&unhex(hex))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: no affine"));
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-12, "{name}: off by {d}: {got:?}");
        }
    }

    #[test]
    fn writes_the_bytes_nibabel_writes() {
        assert_eq!(write_sidecar(&WRITTEN_AFFINE), unhex(NIBABEL_WRITTEN));
    }

    #[test]
    fn written_sidecar_reads_back() {
        let back = read_sidecar_affine(&write_sidecar(&WRITTEN_AFFINE))
            .unwrap()
            .unwrap();
        assert!(max_abs_diff(&back, &WRITTEN_AFFINE) < 1e-12, "{back:?}");
    }

    #[test]
    fn empty_file_leaves_the_affine_alone() {
        assert_eq!(read_sidecar_affine(&[]), Ok(None));
    }

    #[test]
    fn neither_mat_nor_m_is_none() {
        let mut bytes = unhex(V4_MAT_ONLY);
        // Rename `mat` to `max`.
        let at = bytes.windows(4).position(|w| w == b"mat\0").unwrap();
        bytes[at + 2] = b'x';
        assert_eq!(read_sidecar_affine(&bytes), Ok(None));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for hex in [
            V4_MAT_ONLY,
            V5_M_ONLY,
            V5_INT16_M,
            V5_MAT_3D,
            V4_BIG_ENDIAN_M,
        ] {
            let bytes = unhex(hex);
            for n in 1..bytes.len() {
                let r = read_sidecar_affine(&bytes[..n]);
                // A bare v5 header is a well-formed file with no variables.
                if n == 128 && hex.starts_with("4d41544c4142") {
                    assert_eq!(r, Ok(None));
                } else {
                    assert!(r.is_err(), "{n} of {}: {r:?}", bytes.len());
                }
            }
        }
        // With several variables some cuts fall between them; none may panic.
        let bytes = unhex(V5_COMPRESSED_BOTH);
        for n in 1..bytes.len() {
            let _ = read_sidecar_affine(&bytes[..n]);
        }
    }

    #[test]
    fn huge_sizes_are_rejected_without_allocating() {
        let mut v4 = unhex(V4_MAT_ONLY);
        v4[4..8].copy_from_slice(&0x7fff_ffff_u32.to_le_bytes());
        assert!(read_sidecar_affine(&v4).unwrap_err().contains("truncated"));
        let mut v5 = unhex(V5_M_ONLY);
        v5[132..136].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_sidecar_affine(&v5).unwrap_err().contains("truncated"));
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let mut v4 = unhex(V4_MAT_ONLY);
        // 4x4 as 2x8: same byte count, wrong shape.
        v4[4..8].copy_from_slice(&2_u32.to_le_bytes());
        v4[8..12].copy_from_slice(&8_u32.to_le_bytes());
        let e = read_sidecar_affine(&v4).unwrap_err();
        assert!(e.contains("4x4"), "{e}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read_sidecar_affine(b"not a mat file at all").is_err());
        let mut v5 = unhex(V5_M_ONLY);
        v5[126..128].copy_from_slice(b"XX");
        assert!(read_sidecar_affine(&v5).is_err());
        let mut hdf5 = unhex(V5_M_ONLY);
        hdf5[124..126].copy_from_slice(&0x0200_u16.to_le_bytes());
        assert!(read_sidecar_affine(&hdf5).unwrap_err().contains("v7.3"));
    }

    #[test]
    fn corrupt_compressed_data_is_an_error() {
        let mut bytes = unhex(V5_COMPRESSED_BOTH);
        let n = bytes.len();
        for b in &mut bytes[n - 40..n - 8] {
            *b ^= 0x5a;
        }
        assert!(read_sidecar_affine(&bytes).is_err());
    }
}
