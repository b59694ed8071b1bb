//! Voxel-to-world affines: the NIfTI quaternion form, nibabel's fallbacks from pixdim and the
//! SPM origin, and the small matrix helpers they need.

/// A 4x4 row-major voxel-to-world matrix.
pub type Affine = [[f64; 4]; 4];

pub const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// The quaternion form of an affine, as NIfTI stores it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quaternion {
    /// quatern_b, quatern_c, quatern_d
    pub quatern: [f64; 3],
    /// qoffset_x, qoffset_y, qoffset_z
    pub offset: [f64; 3],
    /// pixdim[1..4]
    pub zooms: [f64; 3],
    /// pixdim[0]: -1 or 1
    pub qfac: f64,
}

/// nibabel's `Nifti1Header.quaternion_threshold`: the stored b, c, d are float32, so a
/// `1 - (b² + c² + d²)` within this of zero is rounding noise and means a 180° rotation.
pub const NIFTI1_QUATERNION_THRESHOLD: f64 = 3.0 * f32::EPSILON as f64;

/// nibabel's `Nifti2Header.quaternion_threshold` (float64 fields).
pub const NIFTI2_QUATERNION_THRESHOLD: f64 = 3.0 * f64::EPSILON;

/// nibabel's `Nifti1Header.get_qform()` from the stored fields.
pub fn quaternion_to_affine(bcd: [f64; 3], offset: [f64; 3], zooms: [f64; 3], qfac: f64) -> Affine {
    quaternion_to_affine_with_threshold(bcd, offset, zooms, qfac, NIFTI1_QUATERNION_THRESHOLD)
}

/// [`quaternion_to_affine`] with the header class's threshold for a zero `w²`
/// ([`NIFTI1_QUATERNION_THRESHOLD`] or [`NIFTI2_QUATERNION_THRESHOLD`]).
///
/// Where nibabel raises instead of returning an affine, this returns what its loader would
/// give after its header checks: a `qfac` other than ±1 counts as 1 (the check resets it),
/// negative zooms count as their absolute value (likewise). A `w²` below `-threshold` (b, c, d
/// not a unit quaternion's) makes nibabel raise; here it counts as zero, so the rotation is
/// that of the normalised (0, b, c, d).
pub fn quaternion_to_affine_with_threshold(
    bcd: [f64; 3],
    offset: [f64; 3],
    zooms: [f64; 3],
    qfac: f64,
    threshold: f64,
) -> Affine {
    let [b, c, d] = bcd;
    let w2 = 1.0 - (b * b + c * c + d * d);
    let a = if w2.abs() < threshold.abs() || w2 < 0.0 {
        0.0
    } else {
        w2.sqrt()
    };
    let rot = quat_to_rotation([a, b, c, d]);
    let qfac = if qfac == -1.0 { -1.0 } else { 1.0 };
    let scale = [zooms[0].abs(), zooms[1].abs(), zooms[2].abs() * qfac];
    let mut out = IDENTITY;
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = rot[i][j] * scale[j];
        }
        out[i][3] = offset[i];
    }
    out
}

/// The rotation of quaternion (w, x, y, z), normalised first so that a non-unit quaternion
/// still gives a rotation.
fn quat_to_rotation([w, x, y, z]: [f64; 4]) -> [[f64; 3]; 3] {
    let n = w * w + x * x + y * y + z * z;
    if n < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / n;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ]
}

/// nibabel's `Nifti1Header.set_qform(affine)`: the quaternion, offsets, zooms and qfac.
pub fn affine_to_quaternion(a: &Affine) -> Quaternion {
    // Shears are dropped: the rotation is the one closest to the normalised 3x3 part (its polar
    // factor, as nibabel takes it by SVD). A zero column gives a zero zoom and leaves the
    // rotation to the other columns; nibabel raises there.
    let mut zooms = [0.0; 3];
    let mut r = [[0.0; 3]; 3];
    for (j, zoom) in zooms.iter_mut().enumerate() {
        *zoom = (0..3).map(|i| a[i][j] * a[i][j]).sum::<f64>().sqrt();
        for (i, row) in r.iter_mut().enumerate() {
            row[j] = if *zoom > 0.0 { a[i][j] / *zoom } else { 0.0 };
        }
    }
    // A left-handed voxel grid cannot be a rotation: NIfTI keeps the reflection in qfac, as
    // a flip of the third voxel axis.
    let qfac = if det3(&r) > 0.0 { 1.0 } else { -1.0 };
    if qfac < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let [w, x, y, z] = closest_rotation_quaternion(&r);
    let q = if w < 0.0 { [-x, -y, -z] } else { [x, y, z] };
    Quaternion {
        quatern: q,
        offset: [a[0][3], a[1][3], a[2][3]],
        zooms,
        qfac,
    }
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The unit quaternion (w, x, y, z) of the rotation R maximising trace(Rᵀ m), which is the
/// rotation nearest m in the Frobenius norm (Horn 1987, Bar-Itzhack 2000). For det(m) > 0
/// that is m's orthogonal polar factor, so no SVD is needed; the answer is the dominant
/// eigenvector of a symmetric 4x4 matrix, which Jacobi sweeps find reliably.
fn closest_rotation_quaternion(m: &[[f64; 3]; 3]) -> [f64; 4] {
    let k = [
        [
            m[0][0] + m[1][1] + m[2][2],
            m[2][1] - m[1][2],
            m[0][2] - m[2][0],
            m[1][0] - m[0][1],
        ],
        [
            m[2][1] - m[1][2],
            m[0][0] - m[1][1] - m[2][2],
            m[0][1] + m[1][0],
            m[0][2] + m[2][0],
        ],
        [
            m[0][2] - m[2][0],
            m[0][1] + m[1][0],
            m[1][1] - m[0][0] - m[2][2],
            m[1][2] + m[2][1],
        ],
        [
            m[1][0] - m[0][1],
            m[0][2] + m[2][0],
            m[1][2] + m[2][1],
            m[2][2] - m[0][0] - m[1][1],
        ],
    ];
    let (values, vectors) = jacobi_eigen(k);
    let best = (0..4).fold(0, |best, i| if values[i] > values[best] { i } else { best });
    [
        vectors[0][best],
        vectors[1][best],
        vectors[2][best],
        vectors[3][best],
    ]
}

/// Eigenvalues and eigenvectors (as columns) of a symmetric 4x4 matrix, by cyclic Jacobi.
fn jacobi_eigen(mut a: [[f64; 4]; 4]) -> ([f64; 4], [[f64; 4]; 4]) {
    let mut v = IDENTITY;
    let scale: f64 = a.iter().flatten().map(|x| x * x).sum();
    for _ in 0..64 {
        let off: f64 = (0..4)
            .flat_map(|p| (0..4).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p][q] * a[p][q])
            .sum();
        if off <= scale * 1e-34 || !off.is_finite() {
            break;
        }
        for p in 0..3 {
            for q in p + 1..4 {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                // The smaller of the two rotation angles keeps the sweep stable.
                let t = if theta >= 0.0 {
                    1.0 / (theta + (theta * theta + 1.0).sqrt())
                } else {
                    -1.0 / (-theta + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (kp, kq) = (row[p], row[q]);
                    row[p] = c * kp - s * kq;
                    row[q] = s * kp + c * kq;
                }
                let (rp, rq) = (a[p], a[q]);
                a[p] = std::array::from_fn(|k| c * rp[k] - s * rq[k]);
                a[q] = std::array::from_fn(|k| s * rp[k] + c * rq[k]);
                for row in v.iter_mut() {
                    let (kp, kq) = (row[p], row[q]);
                    row[p] = c * kp - s * kq;
                    row[q] = s * kp + c * kq;
                }
            }
        }
    }
    ([a[0][0], a[1][1], a[2][2], a[3][3]], v)
}

/// nibabel's `get_base_affine()`: from pixdim alone, centred, x flipped.
pub fn pixdim_affine(shape: &[i64], pixdim: &[f64]) -> Affine {
    // `shape` is the image's dimensions (`dim[1..=ndim]`) and `pixdim` the whole field, with
    // `pixdim[0]` the qfac slot; dimensions beyond the third are ignored and missing ones count
    // as one voxel of size 1, as in nibabel.
    let mut dims = [1.0; 3];
    let mut zooms = [1.0; 3];
    for i in 0..shape.len().min(3) {
        dims[i] = shape[i] as f64;
        zooms[i] = pixdim.get(i + 1).copied().unwrap_or(1.0);
    }
    zooms[0] = -zooms[0];
    let mut out = IDENTITY;
    for i in 0..3 {
        out[i][i] = zooms[i];
        out[i][3] = -(dims[i] - 1.0) / 2.0 * zooms[i];
    }
    out
}

/// nibabel's `Spm99AnalyzeHeader.get_best_affine()` without a `.mat`: from pixdim and the
/// 1-based SPM origin, falling back to the centre when the origin is unset or out of range.
pub fn spm_analyze_affine(shape: &[i64], pixdim: &[f64], origin: Option<[i64; 3]>) -> Affine {
    // `shape` and `pixdim` are as for `pixdim_affine`; nibabel reads `dim[1..4]` whatever
    // `dim[0]` says, and dimensions past `shape` are taken as 1 (what nibabel writes there).
    let dims: [i64; 3] = std::array::from_fn(|i| shape.get(i).copied().unwrap_or(1));
    let mut zooms: [f64; 3] = std::array::from_fn(|i| pixdim.get(i + 1).copied().unwrap_or(1.0));
    zooms[0] = -zooms[0];
    // nibabel compares in the header's int16, so `2 * dim` can wrap for huge dimensions.
    let in_range = |o: i64, d: i64| {
        let d16 = d as i16;
        o > i64::from(d16.wrapping_neg()) && o < i64::from(d16.wrapping_mul(2))
    };
    let mut out = IDENTITY;
    match origin {
        Some(o) if o.iter().any(|&v| v != 0) && (0..3).all(|i| in_range(o[i], dims[i])) => {
            for i in 0..3 {
                // int16 origin times float32 pixdim is a float32 product in nibabel; rounding
                // the same way keeps large offsets identical.
                out[i][3] = (-((o[i] - 1) as f32) * zooms[i] as f32) as f64;
            }
        }
        _ => {
            for i in 0..3 {
                out[i][3] = -(dims[i] as f64 - 1.0) / 2.0 * zooms[i];
            }
        }
    }
    for i in 0..3 {
        out[i][i] = zooms[i];
    }
    out
}

pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..4).map(|k| a[i][k] * b[k][j]).sum()))
}

/// Largest absolute difference between two affines.
pub fn max_abs_diff(a: &Affine, b: &Affine) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The inverse of a 4x4 matrix, or `None` when it is singular (to rounding) or not finite.
pub fn invert(a: &Affine) -> Option<Affine> {
    if a.iter().flatten().any(|x| !x.is_finite()) {
        return None;
    }
    let scale = a.iter().flatten().fold(0.0_f64, |m, x| m.max(x.abs()));
    if scale == 0.0 {
        return None;
    }
    let mut m = *a;
    let mut inv = IDENTITY;
    for col in 0..4 {
        let pivot = (col..4).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() <= scale * 4.0 * f64::EPSILON {
            return None;
        }
        m.swap(col, pivot);
        inv.swap(col, pivot);
        let p = m[col][col];
        for j in 0..4 {
            m[col][j] /= p;
            inv[col][j] /= p;
        }
        for row in 0..4 {
            if row != col {
                let f = m[row][col];
                for j in 0..4 {
                    m[row][j] -= f * m[col][j];
                    inv[row][j] -= f * inv[col][j];
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f64 = 1e-6;

    /// (affine, nibabel's b c d, offsets, zooms, qfac, and its get_qform() afterwards), from
    /// `Nifti2Header.set_qform` / `get_qform` (float64 fields, so no float32 rounding).
    #[allow(clippy::type_complexity)]
    #[rustfmt::skip]
    const SET_QFORM: [(Affine, [f64; 3], [f64; 3], [f64; 3], f64, Affine); 8] = [
        // identity_like
        (
        [[2.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 2.0], [0.0, 0.0, 4.0, 3.0], [0.0, 0.0, 0.0, 1.0]],
        [0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0], 1.0,
        [[2.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 2.0], [0.0, 0.0, 4.0, 3.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // oblique
        (
        [[1.4044400453762989, -0.5792589552510311, -0.5960079923851836, -90.0], [0.4126437709773656, 1.912850171698465, -0.29353018502176714, 126.0], [0.3275259947195016, 0.07391402704925015, 2.9255109816054476, -72.0], [0.0, 0.0, 0.0, 1.0]],
        [0.034270798550482116, -0.10602051106179544, 0.1435721750273919], [-90.0, 126.0, -72.0], [1.4999999999999998, 2.0, 3.0], 1.0,
        [[1.4044400453762989, -0.5792589552510311, -0.5960079923851825, -90.0], [0.4126437709773656, 1.912850171698465, -0.2935301850217671, 126.0], [0.3275259947195011, 0.07391402704925032, 2.925510981605448, -72.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // det_negative_ras
        (
        [[-1.9875213383310086, -0.19941730174427758, 0.12494792317669583, 90.0], [-0.1451741873646449, 1.8368051277067285, 0.9723291769583521, -126.0], [0.16936169874541201, -0.76575430955059, 2.29977476900007, -72.0], [0.0, 0.0, 0.0, 1.0]],
        [0.04400759758598343, -0.9787840850538616, 0.1971345972375929], [90.0, -126.0, -72.0], [2.0, 2.0, 2.5000000000000004], -1.0,
        [[-1.987521338331012, -0.19941730174426803, 0.12494792317663654, 90.0], [-0.14517418736465457, 1.8368051277067288, 0.9723291769583492, -126.0], [0.1693616987453645, -0.7657543095505919, 2.2997747690000745, -72.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // det_negative_z
        (
        [[0.24943184776209126, 0.7841490944603897, -2.1259183678843803, 10.0], [0.5401161272064903, 0.4346990285962448, 2.295047808324188, 20.0], [-0.6753209033144548, 0.6372965967227757, 1.0503459670975817, 30.0], [0.0, 0.0, 0.0, 1.0]],
        [0.5477801153570145, 0.5992330711564356, -0.04844045494943561], [10.0, 20.0, 30.0], [0.8999999999999999, 1.1, 3.3], -1.0,
        [[0.24943184776209207, 0.7841490944603895, -2.12591836788438, 10.0], [0.5401161272064898, 0.43469902859624465, 2.2950478083241896, 20.0], [-0.6753209033144548, 0.637296596722776, 1.050345967097579, 30.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // near_180
        (
        [[-0.9999995000000417, -0.000999999833333354, 0.0, 0.0], [0.000999999833333354, -0.9999995000000417, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        [0.0, 0.0, 0.9999998750000026], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 1.0,
        [[-0.9999995000000418, -0.0009999998331617957, 0.0, 0.0], [0.0009999998331617957, -0.9999995000000418, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // exact_180_x
        (
        [[1.0, 0.0, 0.0, 4.0], [0.0, -2.0, 0.0, 5.0], [0.0, 0.0, -3.0, 6.0], [0.0, 0.0, 0.0, 1.0]],
        [1.0, 0.0, 0.0], [4.0, 5.0, 6.0], [1.0, 2.0, 3.0], 1.0,
        [[1.0, 0.0, 0.0, 4.0], [0.0, -2.0, 0.0, 5.0], [0.0, 0.0, -3.0, 6.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // sheared
        (
        [[1.0736390239371887, -0.15683273334880657, 0.5166353029342272, 5.0], [0.4044833709325927, 0.7928640751938616, 0.5647049538467113, -6.0], [-0.35678067340903846, -0.11122073555468281, 1.8585468191205308, 7.0], [0.0, 0.0, 0.0, 1.0]],
        [-0.0982041775613902, 0.14240884861955716, 0.13754446141662063], [5.0, -6.0, 7.0], [1.2014990636700469, 0.8158431221748454, 2.009975124224178], 1.0,
        [[1.1073045191232098, -0.24169927854060327, 0.5040215490383207, 5.0], [0.2887400219883631, 0.7692380196024995, 0.46375520470979914, -6.0], [-0.36620472639150353, -0.12431543729954186, 1.8896807635708164, 7.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        // sheared_det_negative
        (
        [[-2.3404132178852066, 0.724814622780148, -0.7053888687202287, 0.0], [1.4471496327101085, 0.1795211481610714, -1.6645832065958879, 1.0], [1.2044600076778018, 0.6945616747035518, 0.8784015552152371, 0.0], [0.0, 0.0, 0.0, 1.0]],
        [-0.37435493524196267, -0.7690605825106516, -0.5154079675325901], [0.0, 1.0, 0.0], [3.0037476591751178, 1.019803902718557, 2.009975124224178], -1.0,
        [[-2.1452738902354107, 0.6424218047246376, -0.6132472053081971, 0.0], [1.5669352769145963, 0.1921575894763125, -1.6724712838272981, 1.0], [1.4017894898431804, 0.7683551819445176, 0.9310035821385193, 0.0], [0.0, 0.0, 0.0, 1.0]],
        ),
    ];

    /// (stored b c d, offsets, pixdim[1..4], pixdim[0], nibabel's get_qform()) for a
    /// Nifti1Header read through `from_fileobj`, so its loader checks have run.
    #[allow(clippy::type_complexity)]
    #[rustfmt::skip]
    const GET_QFORM_NIFTI1: [([f64; 3], [f64; 3], [f64; 3], f64, Affine); 6] = [
        (
        [0.0, 0.0, 0.9999998807907104], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 1.0,
        [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        (
        [0.5773502588272095, 0.5773502588272095, 0.5773502588272095], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0], -1.0,
        [[-0.6666666666666666, 1.3333333333333333, -1.3333333333333333, 1.0], [1.3333333333333333, -0.6666666666666666, -1.3333333333333333, 2.0], [1.3333333333333333, 1.3333333333333333, 0.6666666666666666, 3.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        (
        [0.10000000149011612, -0.20000000298023224, 0.30000001192092896], [-10.0, 20.0, -30.0], [1.5, 2.5, 3.5], 0.0,
        [[1.1099999749660487, -1.491042825589935, -1.0883065907180356, -10.0], [0.7746256917776824, 1.9999999627470963, -1.0691533240437534, 20.0], [0.6464171201424961, 0.16368091296298318, 3.1499999895691873, -30.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        (
        [0.10000000149011612, -0.20000000298023224, 0.30000001192092896], [-10.0, 20.0, -30.0], [-1.5, 2.5, 3.5], -1.0,
        [[1.1099999749660487, -1.491042825589935, 1.0883065907180356, -10.0], [0.7746256917776824, 1.9999999627470963, 1.0691533240437534, 20.0], [0.6464171201424961, 0.16368091296298318, -3.1499999895691873, -30.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        (
        [0.6000000238418579, 0.30000001192092896, -0.20000000298023224], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], -2.0,
        [[0.7399999833106992, 0.6456571596591302, 0.18848569410188534, 0.0], [0.07434289756132999, 0.19999994039535407, -0.9769714209863257, 0.0], [-0.6684857203279293, 0.7369714078733037, 0.09999992847442485, 0.0], [0.0, 0.0, 0.0, 1.0]],
        ),
        (
        [0.5773503184318542, 0.5773503184318542, 0.5773503184318542], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 1.0,
        [[-0.3333333333333333, 0.6666666666666666, 0.6666666666666666, 0.0], [0.6666666666666666, -0.3333333333333333, 0.6666666666666666, 0.0], [0.6666666666666666, 0.6666666666666666, -0.3333333333333333, 0.0], [0.0, 0.0, 0.0, 1.0]],
        ),
    ];

    fn assert_close(got: &Affine, want: &Affine, what: &str) {
        let d = max_abs_diff(got, want);
        assert!(d < TOL, "{what}: off by {d}\n got {got:?}\nwant {want:?}");
    }

    #[test]
    fn set_qform_matches_nibabel() {
        for (a, bcd, offset, zooms, qfac, _) in SET_QFORM {
            let q = affine_to_quaternion(&a);
            assert_eq!(q.qfac, qfac, "{a:?}");
            for i in 0..3 {
                assert!(
                    (q.zooms[i] - zooms[i]).abs() < TOL,
                    "{a:?}: zooms {:?}",
                    q.zooms
                );
                assert!(
                    (q.offset[i] - offset[i]).abs() < TOL,
                    "{a:?}: offset {:?}",
                    q.offset
                );
            }
            // At exactly 180° w is 0 and nibabel's sign comes from LAPACK; both signs are the
            // same rotation.
            let same = (0..3).all(|i| (q.quatern[i] - bcd[i]).abs() < TOL);
            let opposite = (0..3).all(|i| (q.quatern[i] + bcd[i]).abs() < TOL);
            let w2 = 1.0 - bcd.iter().map(|v| v * v).sum::<f64>();
            assert!(
                same || (w2.abs() < TOL && opposite),
                "{a:?}: {:?} vs {bcd:?}",
                q.quatern
            );
        }
    }

    #[test]
    fn get_qform_matches_nibabel_float64() {
        for (_, bcd, offset, zooms, qfac, want) in SET_QFORM {
            let got = quaternion_to_affine_with_threshold(
                bcd,
                offset,
                zooms,
                qfac,
                NIFTI2_QUATERNION_THRESHOLD,
            );
            assert_close(&got, &want, "get_qform");
        }
    }

    /// An affine through a quaternion and back, as a NIfTI-2 header holds it.
    fn round_trip(a: &Affine) -> Affine {
        let q = affine_to_quaternion(a);
        quaternion_to_affine_with_threshold(
            q.quatern,
            q.offset,
            q.zooms,
            q.qfac,
            NIFTI2_QUATERNION_THRESHOLD,
        )
    }

    #[test]
    fn round_trip_keeps_unsheared_affines() {
        // The first six cases have no shear, so set then get gives the affine back.
        for (a, ..) in &SET_QFORM[..6] {
            assert_close(&round_trip(a), a, "round trip");
        }
    }

    #[test]
    fn sheared_round_trip_is_nibabels_closest_rotation() {
        for (a, .., want) in &SET_QFORM[6..] {
            let q = affine_to_quaternion(a);
            assert!(
                max_abs_diff(
                    &quaternion_to_affine(q.quatern, q.offset, q.zooms, q.qfac),
                    a
                ) > 0.01
            );
            assert_close(&round_trip(a), want, "sheared");
        }
    }

    #[test]
    fn get_qform_matches_nibabel_nifti1_loader() {
        for (bcd, offset, zooms, qfac, want) in GET_QFORM_NIFTI1 {
            assert_close(
                &quaternion_to_affine(bcd, offset, zooms, qfac),
                &want,
                "nifti1",
            );
        }
    }

    #[test]
    fn nifti1_threshold_snaps_w_to_zero_but_nifti2_does_not() {
        let (bcd, offset, zooms, qfac, want) = GET_QFORM_NIFTI1[0];
        assert_close(
            &quaternion_to_affine(bcd, offset, zooms, qfac),
            &want,
            "nifti1",
        );
        let fine = quaternion_to_affine_with_threshold(
            bcd,
            offset,
            zooms,
            qfac,
            NIFTI2_QUATERNION_THRESHOLD,
        );
        assert!(max_abs_diff(&fine, &want) > 1e-4, "{fine:?}");
    }

    #[test]
    fn jacobi_finds_the_eigenvectors() {
        let k = [
            [4.0, 1.0, 0.5, 0.0],
            [1.0, 3.0, 0.0, 0.2],
            [0.5, 0.0, -1.0, 0.7],
            [0.0, 0.2, 0.7, 2.0],
        ];
        let (values, vectors) = jacobi_eigen(k);
        for j in 0..4 {
            for i in 0..4 {
                let kv: f64 = (0..4).map(|m| k[i][m] * vectors[m][j]).sum();
                assert!(
                    (kv - values[j] * vectors[i][j]).abs() < 1e-12,
                    "eigenpair {j}"
                );
            }
        }
    }

    /// (shape, pixdim, nibabel's AnalyzeHeader.get_base_affine())
    #[allow(clippy::type_complexity)]
    #[rustfmt::skip]
    const BASE: [(&[i64], &[f64], Affine); 5] = [
        (&[3, 5, 7], &[1.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0], [[-3.0, 0.0, 0.0, 3.0], [0.0, 2.0, 0.0, -4.0], [0.0, 0.0, 1.0, -3.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[64, 64, 30, 10], &[1.0, 3.0999999046325684, 3.0999999046325684, 4.400000095367432, 2.0, 1.0, 1.0, 1.0], [[-3.0999999046325684, 0.0, 0.0, 97.6499969959259], [0.0, 3.0999999046325684, 0.0, -97.6499969959259], [0.0, 0.0, 4.400000095367432, -63.80000138282776], [0.0, 0.0, 0.0, 1.0]]),
        (&[91, 109], &[1.0, 2.0, 2.5, 1.0, 1.0, 1.0, 1.0, 1.0], [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.5, 0.0, -135.0], [0.0, 0.0, 1.0, -0.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[10], &[1.0, 1.7000000476837158, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [[-1.7000000476837158, 0.0, 0.0, 7.650000214576721], [0.0, 1.0, 0.0, -0.0], [0.0, 0.0, 1.0, -0.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[2, 3, 4, 5, 6], &[1.0, 0.699999988079071, 0.800000011920929, 0.8999999761581421, 1.0, 1.100000023841858, 1.0, 1.0], [[-0.699999988079071, 0.0, 0.0, 0.3499999940395355], [0.0, 0.800000011920929, 0.0, -0.800000011920929], [0.0, 0.0, 0.8999999761581421, -1.3499999642372131], [0.0, 0.0, 0.0, 1.0]]),
    ];

    /// (shape, pixdim, SPM origin, nibabel's Spm99AnalyzeHeader.get_best_affine())
    #[allow(clippy::type_complexity)]
    #[rustfmt::skip]
    const SPM: [(&[i64], &[f64], [i64; 3], Affine); 11] = [
        (&[3, 5, 7], &[1.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0], [3, 4, 5], [[-3.0, 0.0, 0.0, 6.0], [0.0, 2.0, 0.0, -6.0], [0.0, 0.0, 1.0, -4.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[3, 5, 7], &[1.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0, 0, 0], [[-3.0, 0.0, 0.0, 3.0], [0.0, 2.0, 0.0, -4.0], [0.0, 0.0, 1.0, -3.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[300, 200, 100], &[1.0, 1.100000023841858, 0.699999988079071, 3.299999952316284, 1.0, 1.0, 1.0, 1.0], [250, -150, 199], [[-1.100000023841858, 0.0, 0.0, 273.8999938964844], [0.0, 0.699999988079071, 0.0, 105.69999694824219], [0.0, 0.0, 3.299999952316284, -653.3999633789062], [0.0, 0.0, 0.0, 1.0]]),
        (&[91, 109, 91], &[1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], [46, 64, 37], [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[91, 109, 91], &[1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], [46, 64, 200], [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -108.0], [0.0, 0.0, 2.0, -90.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[91, 109, 91], &[1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], [-91, 1, 1], [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -108.0], [0.0, 0.0, 2.0, -90.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[91, 109, 91], &[1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], [-90, 0, 0], [[-2.0, 0.0, 0.0, -182.0], [0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[64, 64], &[1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0], [10, 20, 1], [[-3.0, 0.0, 0.0, 27.0], [0.0, 3.0, 0.0, -57.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[64, 64], &[1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0], [10, 20, 2], [[-3.0, 0.0, 0.0, 94.5], [0.0, 3.0, 0.0, -94.5], [0.0, 0.0, 1.0, -0.0], [0.0, 0.0, 0.0, 1.0]]),
        (&[20000, 10, 10], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [5, 5, 5], [[-1.0, 0.0, 0.0, 9999.5], [0.0, 1.0, 0.0, -4.5], [0.0, 0.0, 1.0, -4.5], [0.0, 0.0, 0.0, 1.0]]),
        (&[40, 40, 20, 5], &[1.0, 3.5, 3.5, 5.0, 2.0, 1.0, 1.0, 1.0], [21, 22, 10], [[-3.5, 0.0, 0.0, 70.0], [0.0, 3.5, 0.0, -73.5], [0.0, 0.0, 5.0, -45.0], [0.0, 0.0, 0.0, 1.0]]),
    ];

    #[test]
    fn pixdim_affine_matches_nibabel() {
        for (shape, pixdim, want) in BASE {
            assert_close(&pixdim_affine(shape, pixdim), &want, &format!("{shape:?}"));
        }
    }

    #[test]
    fn spm_affine_matches_nibabel() {
        for (shape, pixdim, origin, want) in SPM {
            let got = spm_analyze_affine(shape, pixdim, Some(origin));
            assert_close(&got, &want, &format!("{shape:?} {origin:?}"));
        }
    }

    #[test]
    fn spm_affine_without_origin_is_centred() {
        let (shape, pixdim, _, want) = SPM[1];
        assert_close(&spm_analyze_affine(shape, pixdim, None), &want, "no origin");
    }

    #[test]
    fn matmul_and_invert() {
        let a = SET_QFORM[6].0;
        let inv = invert(&a).expect("invertible");
        assert_close(&matmul(&a, &inv), &IDENTITY, "a a⁻¹");
        assert_close(&matmul(&inv, &a), &IDENTITY, "a⁻¹ a");
        let b = SET_QFORM[1].0;
        // (AB)ᵢⱼ by hand for one entry, so matmul's order is pinned down.
        let ab = matmul(&a, &b);
        let want: f64 = (0..4).map(|k| a[1][k] * b[k][2]).sum();
        assert_eq!(ab[1][2], want);
        assert_ne!(ab, matmul(&b, &a));
    }

    #[test]
    fn invert_rejects_singular() {
        let mut a = SET_QFORM[1].0;
        a[2] = [0.0; 4];
        assert_eq!(invert(&a), None);
        assert_eq!(invert(&[[0.0; 4]; 4]), None);
        a[2] = [f64::NAN; 4];
        assert_eq!(invert(&a), None);
    }

    #[test]
    fn max_abs_diff_finds_largest() {
        let mut b = IDENTITY;
        b[3][0] = -0.5;
        b[1][2] = 0.25;
        assert_eq!(max_abs_diff(&IDENTITY, &b), 0.5);
        assert_eq!(max_abs_diff(&b, &b), 0.0);
    }
}
