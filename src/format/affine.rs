//! Voxel-to-world affines: the NIfTI quaternion form, nibabel's fallbacks from pixdim and the
//! SPM origin, and the small matrix helpers they need.
//!
//! IMPLEMENTATION PENDING (a helper is writing this file); signatures are fixed.

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

/// nibabel's `Nifti1Header.get_qform()` from the stored fields.
pub fn quaternion_to_affine(_bcd: [f64; 3], _offset: [f64; 3], _zooms: [f64; 3], _qfac: f64) -> Affine {
    todo!()
}

/// nibabel's `Nifti1Header.set_qform(affine)`: the quaternion, offsets, zooms and qfac.
pub fn affine_to_quaternion(_a: &Affine) -> Quaternion {
    todo!()
}

/// nibabel's `get_base_affine()`: from pixdim alone, centred, x flipped.
pub fn pixdim_affine(_shape: &[i64], _pixdim: &[f64]) -> Affine {
    todo!()
}

/// nibabel's `Spm99AnalyzeHeader.get_best_affine()` without a `.mat`: from pixdim and the
/// 1-based SPM origin, falling back to the centre when the origin is unset or out of range.
pub fn spm_analyze_affine(_shape: &[i64], _pixdim: &[f64], _origin: Option<[i64; 3]>) -> Affine {
    todo!()
}

pub fn matmul(_a: &Affine, _b: &Affine) -> Affine {
    todo!()
}

/// Largest absolute difference between two affines.
pub fn max_abs_diff(_a: &Affine, _b: &Affine) -> f64 {
    todo!()
}
