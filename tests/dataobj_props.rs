//! Property tests of the data object and the renderer, with no kernel: for every source (an
//! uncompressed file, a gzip stream, memory, a conversion) in either byte order and every data
//! type, any byte range read equals the same slice of the whole, and any byte range of a
//! rendered file equals that slice of the whole rendered file.

use imgfs::format::dtype::ALL;
use imgfs::format::{ByteOrder, DataType, Flavor, Header, affine};
use imgfs::image::{Image, VoxelBuffer};
use imgfs::render::Rendering;
use imgfs::render::save_image;
use proptest::prelude::*;

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The same image from each source: memory, a `.nii`, a `.nii.gz`, and a conversion of the
/// `.nii` and of the `.nii.gz` (when the type converts).
fn sources(dtype: DataType, order: ByteOrder, seed: u64, dir: &std::path::Path) -> Vec<Image> {
    let shape = [7u64, 5, 3];
    let n: u64 = shape.iter().product();
    let mut raw = bytes(seed, n as usize * dtype.size());
    let floats = [
        DataType::Float32,
        DataType::Float64,
        DataType::Complex64,
        DataType::Complex128,
    ];
    if floats.contains(&dtype) {
        // Finite numbers, so that a conversion has a value range.
        let width = dtype.swap_width();
        for (i, unit) in raw.chunks_exact_mut(width).enumerate() {
            unit.fill(0);
            let v = (i as f64 * 0.37) - 20.0;
            if width == 4 {
                unit.copy_from_slice(&(v as f32).to_ne_bytes());
            } else {
                unit.copy_from_slice(&v.to_ne_bytes());
            }
        }
    }
    let data = VoxelBuffer::from_bytes(dtype, &shape, &raw, ByteOrder::native());
    let header = Header::new(Flavor::Nifti1, order);
    let memory = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
    let mut images = vec![];
    for suffix in [".nii", ".nii.gz"] {
        let path = dir.join(format!("img{suffix}"));
        save_image(&memory, &path).unwrap();
        images.push(Image::load(&path).unwrap());
        let mut converted = Image::load(&path).unwrap();
        let to = if dtype == DataType::Int16 {
            DataType::Float32
        } else {
            DataType::Int16
        };
        if converted.set_data_dtype(to).is_ok() {
            images.push(converted);
        }
    }
    images.push(memory);
    images
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_range_equals_the_slice_of_the_whole(
        dtype_index in 0..ALL.len(),
        big in any::<bool>(),
        seed in any::<u64>(),
        ranges in prop::collection::vec((0.0f64..1.0, 0usize..200), 1..12),
    ) {
        let dtype = ALL[dtype_index];
        let order = if big { ByteOrder::Big } else { ByteOrder::Little };
        let tmp = tempfile::tempdir().unwrap();
        let mut kinds = vec![];
        for image in sources(dtype, order, seed, tmp.path()) {
            let data = image.dataobj();
            kinds.push(data.kind_name());
            let mut whole = vec![0; data.len() as usize];
            data.read_at(&mut whole, 0).unwrap();
            for &(start, len) in &ranges {
                let a = (start * data.len() as f64) as usize;
                let len = len.min(whole.len() - a);
                let mut part = vec![0; len];
                data.read_at(&mut part, a as u64).unwrap();
                prop_assert_eq!(&part[..], &whole[a..a + len], "{} at {}", data.kind_name(), a);
            }
            let past = data.len();
            prop_assert!(data.read_at(&mut [0; 1], past).is_err());

            let rendering = Rendering::of(&image).unwrap();
            let file = rendering.read_at(0, rendering.size() as usize).unwrap().to_vec();
            prop_assert_eq!(file.len() as u64, rendering.size());
            for &(start, len) in &ranges {
                let a = (start * file.len() as f64) as usize;
                let part = rendering.read_at(a as u64, len).unwrap();
                let b = (a + len).min(file.len());
                prop_assert_eq!(&part[..], &file[a..b], "{} file at {}", data.kind_name(), a);
            }
        }
        for kind in ["file", "gzip", "memory"] {
            prop_assert!(kinds.contains(&kind), "{:?}", kinds);
        }
    }
}
