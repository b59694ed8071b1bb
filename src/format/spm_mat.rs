//! SPM's `.mat` sidecar: the affine of an Analyze image, stored as a MATLAB file next to it.
//!
//! IMPLEMENTATION PENDING (a helper is writing this file); signatures are fixed.

use super::affine::Affine;

/// The affine an SPM `.mat` sidecar gives, as nibabel's `Spm99AnalyzeImage` applies it
/// (0-based voxel coordinates). `Ok(None)` when the file holds neither `mat` nor `M`.
pub fn read_sidecar_affine(_bytes: &[u8]) -> Result<Option<Affine>, String> {
    todo!()
}

/// The bytes of a `.mat` sidecar for an affine (0-based), as nibabel writes it.
pub fn write_sidecar(_affine: &Affine) -> Vec<u8> {
    todo!()
}
