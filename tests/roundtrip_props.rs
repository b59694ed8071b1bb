//! Property tests: random shapes, data types, byte orders, layouts and extensions survive a
//! write and a read, byte for byte.

use imgfs::format::dtype::ALL;
use imgfs::format::{ByteOrder, Extension, Flavor, Header, affine};
use imgfs::image::{Image, VoxelBuffer};
use imgfs::render::save_image;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    flavor: Flavor,
    order: ByteOrder,
    suffix: &'static str,
    dtype_index: usize,
    shape: Vec<u64>,
    seed: u64,
    extensions: Vec<(i32, Vec<u8>)>,
    shift: [f64; 3],
    descrip: String,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            Just(Flavor::Nifti1),
            Just(Flavor::Nifti2),
            Just(Flavor::Analyze)
        ],
        prop_oneof![Just(ByteOrder::Little), Just(ByteOrder::Big)],
        prop_oneof![Just(".nii"), Just(".nii.gz"), Just(".hdr"), Just(".img.gz")],
        0..ALL.len(),
        prop::collection::vec(1u64..6, 1..5),
        any::<u64>(),
        prop::collection::vec((0i32..40, prop::collection::vec(any::<u8>(), 0..40)), 0..3),
        prop::array::uniform3(-100.0f64..100.0),
        "[a-zA-Z0-9 ]{0,40}",
    )
        .prop_map(
            |(flavor, order, suffix, dtype_index, shape, seed, extensions, shift, descrip)| {
                // Analyze has no single-file form and no extensions.
                let suffix = match (flavor, suffix) {
                    (Flavor::Analyze, ".nii") => ".hdr",
                    (Flavor::Analyze, ".nii.gz") => ".hdr.gz",
                    (_, s) => s,
                };
                let extensions = if flavor == Flavor::Analyze {
                    vec![]
                } else {
                    extensions
                };
                Case {
                    flavor,
                    order,
                    suffix,
                    dtype_index,
                    shape,
                    seed,
                    extensions,
                    shift,
                    descrip,
                }
            },
        )
}

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn images_survive_a_write_and_a_read(c in case()) {
        let dtype = ALL[c.dtype_index];
        let n: u64 = c.shape.iter().product();
        let raw = bytes(c.seed, (n as usize) * dtype.size());
        let data = VoxelBuffer::from_bytes(dtype, &c.shape, &raw, ByteOrder::native());
        let mut header = Header::new(c.flavor, c.order);
        header.set_from_str("descrip", &c.descrip).unwrap();
        let mut a = affine::IDENTITY;
        a[0][0] = -2.0;
        a[1][1] = 3.0;
        for (row, s) in c.shift.iter().enumerate() {
            a[row][3] = (*s as f32) as f64;
        }
        let extensions: Vec<Extension> = c
            .extensions
            .iter()
            .map(|(code, content)| Extension { code: *code, content: content.clone() })
            .collect();
        let image = Image::from_parts(header, a, extensions.clone(), data).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(format!("img{}", c.suffix));
        save_image(&image, &path).unwrap();

        let mut back = Image::load(&path).unwrap();
        prop_assert!(back.state().is_clean(), "{}", back.state());
        prop_assert_eq!(back.header().flavor(), c.flavor);
        prop_assert_eq!(back.header().order(), c.order);
        prop_assert_eq!(back.header().datatype().unwrap(), dtype);
        prop_assert_eq!(back.shape(), &c.shape[..]);
        prop_assert_eq!(back.header().descrip(), c.descrip.clone());
        prop_assert!(affine::max_abs_diff(back.affine(), &a) < 1e-4,
            "{:?} vs {:?}", back.affine(), a);
        prop_assert_eq!(back.extensions().len(), extensions.len());
        for (got, want) in back.extensions().iter().zip(&extensions) {
            prop_assert_eq!(got.code, want.code);
            prop_assert_eq!(&got.content[..want.content.len()], &want.content[..]);
            prop_assert!(got.content[want.content.len()..].iter().all(|&b| b == 0));
        }
        prop_assert_eq!(back.data().unwrap().bytes(), &raw[..]);

        // Writing the loaded image again in its own format keeps the header bytes.
        let again = tmp.path().join(format!("again{}", c.suffix));
        save_image(&back, &again).unwrap();
        let reread = Image::load(&again).unwrap();
        prop_assert_eq!(reread.header().as_bytes(), back.header().as_bytes());
    }
}
