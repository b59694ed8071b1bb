//! The image model: one test per dirty-tracking rule of nibabel's design note, lazy loading,
//! and round trips through every file format.

use std::fs;
use std::path::{Path, PathBuf};

use imgfs::format::{ByteOrder, DataType, Extension, Flavor, Header, affine};
use imgfs::image::{Image, LARGE_EXTENSION, Reason, VoxelBuffer};
use imgfs::render::save_image;

fn saved(dir: &Path, name: &str, extensions: Vec<Extension>) -> PathBuf {
    let values: Vec<i16> = (0..60).map(|i| i * 3 - 20).collect();
    let data = VoxelBuffer::from_vec(&[3, 4, 5], &values);
    let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
    let image = Image::from_parts(header, affine::IDENTITY, extensions, data).unwrap();
    let path = dir.join(name);
    save_image(&image, &path).unwrap();
    path
}

fn loaded(extensions: Vec<Extension>) -> (tempfile::TempDir, Image) {
    let tmp = tempfile::tempdir().unwrap();
    let path = saved(tmp.path(), "a.nii", extensions);
    let image = Image::load(&path).unwrap();
    (tmp, image)
}

#[test]
fn a_loaded_image_is_clean_and_reading_its_data_keeps_it_clean() {
    let (_tmp, mut image) = loaded(vec![]);
    assert!(image.state().is_clean(), "{}", image.state());
    assert_eq!(image.data().unwrap().typed::<i16>().unwrap()[1], -17);
    let _ = image.fdata().unwrap();
    assert!(image.state().is_clean(), "{}", image.state());
}

#[test]
fn data_zeroed_after_it_was_handed_out_is_dirty() {
    let (_tmp, mut image) = loaded(vec![]);
    image.data_mut().unwrap().view_mut::<i16>().unwrap().fill(0);
    assert_eq!(image.state().reasons, vec![Reason::DataWritten]);
}

#[test]
fn header_dtype_set_to_complex64_is_dirty() {
    let (_tmp, mut image) = loaded(vec![]);
    image.set_field("datatype", "complex64").unwrap();
    let state = image.state().to_string();
    assert!(state.contains("header field datatype changed"), "{state}");
    assert_eq!(image.header().datatype().unwrap(), DataType::Complex64);
}

#[test]
fn setting_a_field_to_its_current_value_leaves_the_image_clean() {
    let (_tmp, mut image) = loaded(vec![]);
    let code = image.header().sform_code().to_string();
    image.set_field("sform_code", &code).unwrap();
    image.set_field("datatype", "int16").unwrap();
    assert!(image.state().is_clean(), "{}", image.state());
}

#[test]
fn a_changed_affine_is_dirty() {
    let (_tmp, mut image) = loaded(vec![]);
    let mut a = *image.affine();
    a[0][3] += 1.5;
    image.set_affine(a);
    let state = image.state().to_string();
    assert!(state.contains("affine changed"), "{state}");
    assert!(state.contains("header field srow_x changed"), "{state}");
}

#[test]
fn the_override_marks_dirty_then_clean() {
    let (_tmp, mut image) = loaded(vec![]);
    image.mark_dirty();
    assert_eq!(image.state().to_string(), "dirty: marked dirty");
    image.mark_clean();
    assert!(image.state().is_clean());
    image.set_field("descrip", "changed").unwrap();
    assert!(!image.state().is_clean());
    image.mark_clean();
    assert!(image.state().is_clean(), "marking clean accepts the edits");
}

#[test]
fn small_extensions_are_compared() {
    let ext = Extension {
        code: 6,
        content: b"a comment\0\0\0\0\0\0\0".to_vec(),
    };
    let (_tmp, mut image) = loaded(vec![ext]);
    let same = image.extension_mut(0).unwrap().content.clone();
    image.extension_mut(0).unwrap().content = same;
    assert!(image.state().is_clean(), "{}", image.state());
    image.extension_mut(0).unwrap().content[0] = b'A';
    assert_eq!(image.state().reasons, vec![Reason::ExtensionChanged(0)]);
}

#[test]
fn a_large_extension_handed_out_for_writing_counts_as_changed() {
    let ext = Extension {
        code: 4,
        content: vec![7; LARGE_EXTENSION + 8],
    };
    let (_tmp, mut image) = loaded(vec![ext]);
    assert!(image.state().is_clean());
    let _ = image.extension_mut(0).unwrap();
    assert_eq!(
        image.state().reasons,
        vec![Reason::LargeExtensionHandedOut(0)]
    );
}

#[test]
fn an_original_changed_on_disk_is_never_clean_again() {
    let tmp = tempfile::tempdir().unwrap();
    let path = saved(tmp.path(), "a.nii", vec![]);
    let mut image = Image::load(&path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut bytes = fs::read(&path).unwrap();
    bytes.push(0);
    fs::write(&path, &bytes).unwrap();
    assert!(image.state().original_changed());
    // Even putting the old bytes back, or overriding, does not restore the correspondence.
    bytes.pop();
    fs::write(&path, &bytes).unwrap();
    image.mark_clean();
    let state = image.state().to_string();
    assert!(state.contains("modified on disk since load"), "{state}");
    let err = image.data().unwrap_err().to_string();
    assert!(err.contains("modified on disk since load"), "{err}");
}

#[test]
fn an_in_memory_image_is_never_clean() {
    let data = VoxelBuffer::from_vec(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0]);
    let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
    let image = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
    assert_eq!(image.state().to_string(), "dirty: not loaded from a file");
}

#[test]
fn a_reshape_that_changes_the_voxel_count_is_refused() {
    let (_tmp, mut image) = loaded(vec![]);
    let err = image.set_field("dim", "3,3,4,6,1,1,1,1").unwrap_err();
    assert!(err.to_string().contains("number of voxels"), "{err}");
    image.set_field("dim", "3,4,3,5,1,1,1,1").unwrap();
    assert_eq!(image.shape(), &[4, 3, 5]);
}

/// Bytes read by this process so far (Linux `rchar`).
fn bytes_read() -> u64 {
    let io = fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn loading_a_1_gib_image_reads_only_its_header() {
    let tmp = tempfile::tempdir().unwrap();
    let mut header = Header::new(Flavor::Nifti1, ByteOrder::Little);
    header.set_shape(&[512, 512, 256, 4]).unwrap();
    header.set_datatype(DataType::Int16);
    let prefix = imgfs::format::io::single_file_prefix(&header, &[]);
    let path = tmp.path().join("big.nii");
    let file = fs::File::create(&path).unwrap();
    use std::io::Write;
    (&file).write_all(&prefix).unwrap();
    file.set_len(prefix.len() as u64 + (1 << 30)).unwrap();
    drop(file);
    let before = bytes_read();
    let image = Image::load(&path).unwrap();
    let read = bytes_read() - before;
    assert_eq!(image.shape(), &[512, 512, 256, 4]);
    assert!(read < 64 * 1024, "loading read {read} bytes");
}

/// An image with float32 values across a wide range, NaN and infinities, in a file.
fn floats_file(dir: &Path, order: ByteOrder) -> PathBuf {
    let mut values: Vec<f32> = (0..4000).map(|i| (i as f32 - 1700.5) * 37.25).collect();
    values[5] = f32::NAN;
    values[77] = f32::INFINITY;
    values[78] = f32::NEG_INFINITY;
    let data = VoxelBuffer::from_vec(&[10, 20, 20], &values);
    let header = Header::new(Flavor::Nifti1, order);
    let image = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
    let path = dir.join("floats.nii");
    save_image(&image, &path).unwrap();
    path
}

#[test]
fn a_datatype_change_of_an_original_converts_on_read_to_what_converting_at_once_gives() {
    let tmp = tempfile::tempdir().unwrap();
    for order in [ByteOrder::Little, ByteOrder::Big] {
        let path = floats_file(tmp.path(), order);
        for dtype in [DataType::Int16, DataType::Uint8, DataType::Float64] {
            let mut lazy = Image::load(&path).unwrap();
            lazy.set_data_dtype(dtype).unwrap();
            assert!(
                lazy.dataobj().kind_name() == "converted",
                "a datatype change of data still on disk holds no memory"
            );
            let mut eager = Image::load(&path).unwrap();
            eager.data().unwrap();
            eager.set_data_dtype(dtype).unwrap();
            assert!(
                eager.dataobj().kind_name() == "converted",
                "a datatype change of data in memory converts nothing at once either"
            );
            assert_eq!(lazy.header().slope_inter(), eager.header().slope_inter());
            let (a, b) = (tmp.path().join("lazy.nii"), tmp.path().join("eager.nii"));
            save_image(&lazy, &a).unwrap();
            save_image(&eager, &b).unwrap();
            assert_eq!(
                fs::read(&a).unwrap(),
                fs::read(&b).unwrap(),
                "{order:?} {dtype}"
            );
            // Taking the data loads the converted numbers.
            assert_eq!(lazy.data().unwrap(), eager.data().unwrap());
        }
    }
}

#[test]
fn every_datatype_change_starts_from_the_data_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let path = floats_file(tmp.path(), ByteOrder::Big);
    let mut original = Image::load(&path).unwrap();
    let values = original.fdata().unwrap();
    let mut lazy = Image::load(&path).unwrap();
    let mut eager = Image::load(&path).unwrap();
    eager.data().unwrap();
    for image in [&mut lazy, &mut eager] {
        image.set_data_dtype(DataType::Int16).unwrap();
        image.set_data_dtype(DataType::Uint8).unwrap();
        // Taking the array makes the converted numbers, and changes nothing below them.
        assert_eq!(image.data().unwrap().dtype(), DataType::Uint8);
        image.set_data_dtype(DataType::Float64).unwrap();
        let back: Vec<u64> = image.fdata().unwrap().iter().map(|v| v.to_bits()).collect();
        let want: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert!(
            back == want,
            "float64 after int16 and uint8 is not the original values"
        );
        image.set_data_dtype(DataType::Float32).unwrap();
        assert_eq!(image.header().datatype().unwrap(), DataType::Float32);
    }
    // Back in the original's own type, a loaded image is its original again.
    assert!(lazy.state().is_clean(), "{}", lazy.state());
    assert!(lazy.dataobj().kind_name() == "file");
    // Once written to, the written data are what later changes start from.
    let mut written = Image::load(&path).unwrap();
    written.set_data_dtype(DataType::Int16).unwrap();
    written.data_mut().unwrap().typed_mut::<i16>().unwrap()[0] = 7;
    let (slope, inter) = written.header().slope_inter().unwrap();
    written.set_data_dtype(DataType::Float64).unwrap();
    assert_eq!(written.header().slope_inter(), Some((1.0, 0.0)));
    let first = written.fdata().unwrap()[0];
    let want = 7.0 * slope + inter;
    assert!(
        (first - want).abs() <= 1e-9 * want.abs(),
        "{first} vs {want}"
    );
}

/// Links planted in a shared directory where `save` writes: at the temporary names earlier
/// versions used (`.NAME.imgfs-PID.tmp`, guessable from the daemon's pid) and at the target
/// name itself. None of them may be written through.
#[test]
fn save_never_writes_through_a_planted_link() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"the user's own file").unwrap();
    let source = saved(tmp.path(), "source.nii", vec![]);
    let image = Image::load(&source).unwrap();
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let pid = std::process::id();
    for name in ["out.nii", "pair.hdr", "pair.img", "gz.nii.gz"] {
        for planted in [
            format!(".{name}.imgfs-{pid}.tmp"),
            format!(".{name}.imgfs-tmp"),
            format!(".{name}.tmp"),
        ] {
            symlink(&victim, shared.join(planted)).unwrap();
        }
    }
    // The target itself a link: it is replaced by the saved file, the file it named is left
    // alone (a save into a shared directory must not be steered elsewhere).
    symlink(&victim, shared.join("out.nii")).unwrap();
    for name in ["out.nii", "pair.hdr", "gz.nii.gz"] {
        save_image(&image, &shared.join(name)).unwrap();
    }
    assert_eq!(fs::read(&victim).unwrap(), b"the user's own file");
    let out = shared.join("out.nii");
    assert!(fs::symlink_metadata(&out).unwrap().file_type().is_file());
    assert_eq!(fs::read(&out).unwrap(), fs::read(&source).unwrap());
    let mut pair = Image::load(&shared.join("pair.hdr")).unwrap();
    let mut gz = Image::load(&shared.join("gz.nii.gz")).unwrap();
    let mut original = Image::load(&source).unwrap();
    let values = original.fdata().unwrap();
    assert_eq!(pair.fdata().unwrap(), values);
    assert_eq!(gz.fdata().unwrap(), values);
    // Only the saved files and the planted links are left: no temporary file, and the files
    // have the usual mode (0666 less the umask), not a temporary file's 0600.
    let mut names: Vec<String> = fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names, ["gz.nii.gz", "out.nii", "pair.hdr", "pair.img"]);
    let hidden = fs::read_dir(&shared).unwrap().filter(|e| {
        let e = e.as_ref().unwrap();
        e.file_name().to_string_lossy().starts_with('.') && !e.file_type().unwrap().is_symlink()
    });
    assert_eq!(hidden.count(), 0, "a temporary file was left behind");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !umask);
}
