//! The Rust API on real FUSE mounts: files are read back through the kernel with std::fs.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use imgfs::format::{ByteOrder, Flavor, Header, affine};
use imgfs::image::{Image, VoxelBuffer};
use imgfs::mount::Mount;
use imgfs::render::save_image;
use parking_lot::Mutex;

/// A float32 image on disk with known values, and the bytes of that file.
fn write_image(dir: &Path, name: &str, order: ByteOrder) -> (PathBuf, Vec<f32>) {
    let shape = [4u64, 5, 6];
    let values: Vec<f32> = (0..120).map(|i| i as f32 * 0.5 - 7.0).collect();
    let data = VoxelBuffer::from_vec(&shape, &values);
    let mut a = affine::IDENTITY;
    a[0][0] = 2.0;
    a[0][3] = -10.0;
    let image = Image::from_parts(Header::new(Flavor::Nifti1, order), a, vec![], data).unwrap();
    let path = dir.join(name);
    save_image(&image, &path).unwrap();
    (path, values)
}

fn mount(dir: &Path) -> Mount {
    Mount::new(dir.join("mnt")).expect("mount (needs root and /dev/fuse)")
}

fn header_of(bytes: &[u8]) -> Header {
    Header::parse(bytes).unwrap()
}

fn floats(bytes: &[u8], order: ByteOrder) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| {
            let raw = [c[0], c[1], c[2], c[3]];
            match order {
                ByteOrder::Little => f32::from_le_bytes(raw),
                ByteOrder::Big => f32::from_be_bytes(raw),
            }
        })
        .collect()
}

#[test]
fn clean_nii_is_passed_through_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    let served = fs::read(m.dir().join("a.nii")).unwrap();
    assert_eq!(served, fs::read(&orig).unwrap());
    assert_eq!(m.path("a").unwrap(), orig);
    let stats = &m.catalog().stats;
    assert_eq!(stats.passthrough_opens.load(Ordering::Relaxed), 1);
    assert_eq!(stats.rendered_reads.load(Ordering::Relaxed), 0);
}

#[test]
fn without_passthrough_clean_reads_are_forwarded_to_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let options = imgfs::mount::MountOptions {
        no_passthrough: true,
        ..Default::default()
    };
    let m = Mount::with_options(tmp.path().join("mnt"), &options).unwrap();
    m.add("a", &orig).unwrap();
    let served = fs::read(m.dir().join("a.nii")).unwrap();
    assert_eq!(served, fs::read(&orig).unwrap());
    let stats = &m.catalog().stats;
    assert_eq!(stats.passthrough_opens.load(Ordering::Relaxed), 0);
    assert!(stats.forwarded_reads.load(Ordering::Relaxed) > 0);
}

#[test]
fn header_edit_streams_data_from_the_original_without_loading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, values) = write_image(tmp.path(), "a.nii", ByteOrder::Big);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    m.edit("a", |img| img.set_field("descrip", "edited by a test"))
        .unwrap();
    let served = fs::read(m.dir().join("a.nii")).unwrap();
    let header = header_of(&served);
    assert_eq!(header.descrip(), "edited by a test");
    assert_eq!(header.order(), ByteOrder::Big);
    let offset = header.vox_offset_raw() as usize;
    assert_eq!(floats(&served[offset..], ByteOrder::Big), values);
    let still_on_disk = m
        .edit("a", |img| Ok(img.dataobj().kind_name() == "file"))
        .unwrap();
    assert!(still_on_disk, "a header edit must not load the voxel array");
    let state = m.state("a").unwrap();
    assert_eq!(state.to_string(), "dirty: header field descrip changed");
    assert_eq!(m.path("a").unwrap(), m.dir().join("a.nii"));
}

#[test]
fn an_open_file_keeps_its_version_and_a_new_open_sees_the_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    m.edit("a", |img| img.set_field("descrip", "first"))
        .unwrap();
    let path = m.dir().join("a.nii");
    let before = fs::File::open(&path).unwrap();
    let mut buf = [0u8; 5];
    before.read_exact_at(&mut buf, 148).unwrap();
    assert_eq!(&buf, b"first");
    m.edit("a", |img| img.set_field("descrip", "second"))
        .unwrap();
    let after = fs::read(&path).unwrap();
    assert_eq!(header_of(&after).descrip(), "second");
    before.read_exact_at(&mut buf, 148).unwrap();
    assert_eq!(
        &buf, b"first",
        "the earlier open must keep reading its version"
    );
}

#[test]
fn data_written_through_the_api_are_served_and_dirty_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, values) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    m.edit("a", |img| {
        let data = img.data()?;
        assert_eq!(data.typed::<f32>().unwrap(), &values[..]);
        Ok(())
    })
    .unwrap();
    assert!(m.state("a").unwrap().is_clean(), "reading never dirties");
    m.edit("a", |img| {
        img.data_mut()?.view_mut::<f32>().unwrap().fill(0.0);
        Ok(())
    })
    .unwrap();
    assert_eq!(m.state("a").unwrap().to_string(), "dirty: data written");
    let served = fs::read(m.dir().join("a.nii")).unwrap();
    let offset = header_of(&served).vox_offset_raw() as usize;
    assert!(
        floats(&served[offset..], ByteOrder::Little)
            .iter()
            .all(|&v| v == 0.0)
    );
    assert_eq!(
        fs::read(&orig).unwrap().len(),
        served.len(),
        "original untouched"
    );
}

#[test]
fn a_datatype_change_converts_the_served_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, values) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    m.edit("a", |img| img.set_field("datatype", "int16"))
        .unwrap();
    let served = fs::read(m.dir().join("a.nii")).unwrap();
    let header = header_of(&served);
    assert_eq!(header.datatype().unwrap().name(), "int16");
    let (slope, inter) = header.slope_inter().expect("float to int16 is scaled");
    let offset = header.vox_offset_raw() as usize;
    assert_eq!(served.len(), offset + 120 * 2);
    for (chunk, want) in served[offset..].chunks(2).zip(&values) {
        let got = f64::from(i16::from_le_bytes([chunk[0], chunk[1]])) * slope + inter;
        assert!((got - f64::from(*want)).abs() <= slope, "{got} vs {want}");
    }
}

#[test]
fn modifying_the_original_dirties_the_image_and_fails_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = fs::OpenOptions::new().write(true).open(&orig).unwrap();
    f.write_all_at(&[0xff; 16], 400).unwrap();
    drop(f);
    let state = m.state("a").unwrap();
    assert!(state.original_changed(), "{state}");
    assert!(
        state.to_string().contains("modified on disk since load"),
        "{state}"
    );
    assert_eq!(m.path("a").unwrap(), m.dir().join("a.nii"));
    let mut file = fs::File::open(m.dir().join("a.nii")).unwrap();
    let mut all = Vec::new();
    let err = file.read_to_end(&mut all).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn a_datatype_change_reads_the_original_so_modifying_it_fails_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    m.edit("a", |img| img.set_field("datatype", "int16"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = fs::OpenOptions::new().write(true).open(&orig).unwrap();
    f.write_all_at(&[0xff; 16], 400).unwrap();
    drop(f);
    let state = m.state("a").unwrap().to_string();
    assert!(state.contains("modified on disk since load"), "{state}");
    let mut all = Vec::new();
    let err = fs::File::open(m.dir().join("a.nii"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn truncating_the_original_under_a_streamed_read_fails_it_and_the_daemon_serves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    // 32 MiB: a read is many requests.
    let big = tmp.path().join("big.nii");
    let data = VoxelBuffer::zeros(imgfs::format::DataType::Float32, &[256, 256, 128]);
    let header = Header::new(Flavor::Nifti1, ByteOrder::Little);
    let image = Image::from_parts(header, affine::IDENTITY, vec![], data).unwrap();
    save_image(&image, &big).unwrap();
    let m = mount(tmp.path());
    m.add("big", &big).unwrap();
    m.add("a", &orig).unwrap();
    m.edit("big", |img| img.set_field("descrip", "streamed"))
        .unwrap();
    let mut file = fs::File::open(m.dir().join("big.nii")).unwrap();
    let mut first = vec![0; 4 << 20];
    file.read_exact(&mut first).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut rest = Vec::new();
    let err = file.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        fs::read(m.dir().join("a.nii")).is_ok(),
        "the other image is still served"
    );
}

#[test]
fn replacing_the_original_dirties_the_image_and_serves_what_was_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, values) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    let other = tmp.path().join("other.nii");
    fs::write(&other, vec![0u8; 1000]).unwrap();
    fs::rename(&other, &orig).unwrap();
    let state = m.state("a").unwrap();
    assert!(
        state.to_string().contains("replaced on disk since load"),
        "{state}"
    );
    let mut file = fs::File::open(m.dir().join("a.nii")).unwrap();
    let mut served = Vec::new();
    file.read_to_end(&mut served).unwrap();
    let offset = header_of(&served).vox_offset_raw() as usize;
    assert_eq!(floats(&served[offset..], ByteOrder::Little), values);
    file.seek(SeekFrom::Start(0)).unwrap();
}

#[test]
fn path_follows_the_state_and_mark_clean_brings_the_original_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    assert_eq!(m.path("a").unwrap(), orig);
    m.edit("a", |img| img.set_field("descrip", "x")).unwrap();
    assert_eq!(m.path("a").unwrap(), m.dir().join("a.nii"));
    m.edit("a", |img| {
        img.mark_clean();
        Ok(())
    })
    .unwrap();
    assert_eq!(m.path("a").unwrap(), orig);
    m.edit("a", |img| {
        img.mark_dirty();
        Ok(())
    })
    .unwrap();
    assert_eq!(m.state("a").unwrap().to_string(), "dirty: marked dirty");
}

#[test]
fn a_compressed_original_is_rendered_with_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, values) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let gz = tmp.path().join("b.nii.gz");
    let image = Image::load(&orig).unwrap();
    save_image(&image, &gz).unwrap();
    let m = mount(tmp.path());
    m.add("b", &gz).unwrap();
    assert!(m.state("b").unwrap().is_clean());
    assert_eq!(m.path("b").unwrap(), gz);
    let served = fs::read(m.dir().join("b.nii")).unwrap();
    let offset = header_of(&served).vox_offset_raw() as usize;
    assert_eq!(floats(&served[offset..], ByteOrder::Little), values);
}

#[test]
fn bad_names_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, _) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    let long = "x".repeat(300);
    for (name, why) in [
        ("", "empty"),
        ("..", "starts with '.'"),
        ("a/b", "only letters"),
        ("a\0b", "only letters"),
        (long.as_str(), "longer than 200"),
    ] {
        let err = m.add(name, &orig).unwrap_err().to_string();
        assert!(err.contains(why), "{name:?}: {err}");
    }
    m.add("fine", &orig).unwrap();
    assert!(fs::read(m.dir().join("fine.nii")).is_ok());
}

#[test]
fn concurrent_readers_each_see_one_whole_version_while_the_image_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (orig, values) = write_image(tmp.path(), "a.nii", ByteOrder::Little);
    let m = mount(tmp.path());
    m.add("a", &orig).unwrap();
    m.edit("a", |img| img.set_field("descrip", "version 0"))
        .unwrap();
    let path = m.dir().join("a.nii");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let bytes = fs::read(&path).unwrap();
                        let header = header_of(&bytes);
                        let offset = header.vox_offset_raw() as usize;
                        assert_eq!(bytes.len(), offset + values.len() * 4);
                        assert_eq!(floats(&bytes[offset..], ByteOrder::Little), values);
                        let descrip = header.descrip();
                        let n: u32 = descrip
                            .strip_prefix("version ")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or_else(|| panic!("a mixed header: {descrip:?}"));
                        seen.lock().insert(n);
                    }
                })
            })
            .collect();
        // On a loaded machine the readers may start late or stall: keep changing the image
        // until they have seen several versions.
        let mut i = 1;
        while (i < 2000 || seen.lock().len() < 5) && !readers.iter().any(|r| r.is_finished()) {
            assert!(i < 1_000_000, "the readers saw only {:?}", seen.lock());
            m.edit("a", |img| img.set_field("descrip", &format!("version {i}")))
                .unwrap();
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
    // Old versions the kernel looked up are kept only until it forgets them.
    let settled = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.catalog().kernel_held_versions() <= 1
    });
    assert!(
        settled,
        "{} versions still held",
        m.catalog().kernel_held_versions()
    );
}
