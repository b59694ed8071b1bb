//! Saving: an image written to disk in the format a path's name calls for. It lives beside the
//! renderer because it lays the image out as the renderer does (the same header choice and
//! the same data stream), only into a file instead of by byte range.

use std::path::Path;

use crate::format::{self, Flavor};
use crate::image::{Image, ImageError};
use crate::progress::{Counting, Progress, Silent};
use crate::render::Rendering;

/// Writes an image to `out`: NIfTI-2 stays NIfTI-2, Analyze stays Analyze in a pair, the rest
/// is NIfTI-1.
pub fn save_image(image: &Image, out: &Path) -> Result<(), ImageError> {
    save_image_with_progress(image, out, &Silent)
}

/// [`save_image`], telling `progress` how many of the data bytes are written.
pub fn save_image_with_progress(
    image: &Image,
    out: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let map = format::FileMap::from_path(out)?;
    let source_flavor = image.header().flavor();
    let flavor = match (map.is_single(), source_flavor) {
        (_, Flavor::Nifti2) => Flavor::Nifti2,
        (false, Flavor::Analyze) => Flavor::Analyze,
        _ => Flavor::Nifti1,
    };
    let rendering = Rendering::of(image).map_err(ImageError::DataUnavailable)?;
    let header = image.header_as(flavor);
    let data_len = rendering.size() - rendering.prefix().len() as u64;
    let mut write = |w: &mut dyn std::io::Write| {
        let mut counting = Counting::new(w, data_len, progress);
        rendering.write_data_to(&mut counting)?;
        counting.finish();
        Ok(())
    };
    format::io::save(
        out,
        format::io::ImageToSave {
            header: &header,
            extensions: image.extensions(),
            affine: Some(image.affine()),
            write_data: &mut write,
        },
    )?;
    Ok(())
}
