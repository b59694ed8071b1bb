//! The on-disk formats: NIfTI-1, NIfTI-2 and Analyze 7.5 headers, extensions, voxel layout and
//! file naming. Everything here is about bytes on disk; nothing here knows about mounts.

pub mod affine;
pub mod dtype;
pub mod error;
pub mod gzindex;
pub mod header;
pub mod io;
pub mod spm_mat;

pub use affine::Affine;
pub use dtype::DataType;
pub use error::FormatError;
pub use header::{ByteOrder, FieldValue, Flavor, Header};
pub use io::{Extension, FileMap, LoadedFile};
