//! Measures the gzip index (`imgfs::format::gzindex`, zlib-rs) against flate2's default
//! backend (miniz_oxide), zlib 1.2.13 (through Python's zlib, when `IMGFS_BENCH_PYTHON` names
//! an interpreter), `gzip -dc` and `pigz -dc`, on one `.nii.gz`; run by `scripts/bench_gzindex`.
//! Each figure is the median of three runs; ratios are to `gzip -dc` in the same run.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use imgfs::format::gzindex::{GzIndex, GzOptions};

fn median(mut f: impl FnMut() -> f64) -> f64 {
    let mut t: Vec<f64> = (0..3).map(|_| f()).collect();
    t.sort_by(f64::total_cmp);
    t[1]
}

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn command(program: &str, args: &[&str]) -> Option<f64> {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| {
        median(|| {
            timed(|| {
                assert!(
                    Command::new(program)
                        .args(args)
                        .stdout(Stdio::null())
                        .status()
                        .unwrap()
                        .success()
                )
            })
        })
    })
}

fn index(path: &Path) -> GzIndex {
    let file = File::open(path).expect("open the image");
    GzIndex::new(Arc::new(file), GzOptions::default()).expect("gzip index")
}

/// Reads the whole stream in `chunk`-byte reads; returns the bytes read.
fn stream(idx: &GzIndex, chunk: usize) -> u64 {
    let mut buf = vec![0; chunk];
    let mut at = 0u64;
    loop {
        let n = idx.read_at(&mut buf, at).expect("read");
        if n == 0 {
            return at;
        }
        at += n as u64;
    }
}

fn main() {
    let arg = std::env::args()
        .nth(1)
        .expect("usage: bench_gzindex FILE.nii.gz");
    let path = Path::new(&arg);
    let compressed = std::fs::metadata(path).expect("stat").len();
    // warm the page cache
    std::fs::read(path).expect("read");

    let gzip = command("gzip", &["-dc", &arg]).expect("gzip -dc failed");
    let mut rows: Vec<(String, f64)> = vec![("gzip -dc".into(), gzip)];
    if let Some(t) = command("pigz", &["-dc", &arg]) {
        rows.push(("pigz -dc".into(), t));
    }
    if let Ok(py) = std::env::var("IMGFS_BENCH_PYTHON") {
        let code = "import sys,zlib\nd=zlib.decompressobj(31)\nf=open(sys.argv[1],'rb')\nwhile b:=f.read(1<<20): d.decompress(b)";
        if let Some(t) = command(&py, &["-c", code, &arg]) {
            rows.push(("zlib 1.2.13 (Python zlib, one member)".into(), t));
        }
    }
    let mut len = 0;
    let t = median(|| {
        timed(|| {
            let mut d = flate2::read::MultiGzDecoder::new(File::open(path).unwrap());
            let mut buf = vec![0; 1 << 20];
            len = 0;
            loop {
                let n = d.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                len += n as u64;
            }
        })
    });
    rows.push(("flate2 1.1 miniz_oxide (default backend)".into(), t));

    let t = median(|| timed(|| assert_eq!(stream(&index(path), 1 << 20), len)));
    rows.push(("gzindex first pass, 1 MiB reads (zlib-rs)".into(), t));
    let t = median(|| timed(|| assert_eq!(stream(&index(path), 128 << 10), len)));
    rows.push(("gzindex first pass, 128 KiB reads".into(), t));

    let built = index(path);
    built.build_all().unwrap();
    let t = median(|| timed(|| assert_eq!(stream(&built, 128 << 10), len)));
    rows.push(("gzindex indexed re-read, 128 KiB reads".into(), t));

    // random 1 MiB reads over the indexed stream
    let mut state = 1u64;
    let mut buf = vec![0; 1 << 20];
    let reads = 64;
    let t = median(|| {
        timed(|| {
            for _ in 0..reads {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (state >> 16) % (len - (1 << 20));
                built.read_at(&mut buf, at).unwrap();
            }
        })
    });
    let random_ms = t / reads as f64 * 1000.0;

    let fresh = index(path);
    let mut hdr = [0u8; 352];
    let hdr_t = timed(|| {
        fresh.read_at(&mut hdr, 0).unwrap();
    });
    let s = built.stats();

    println!(
        "image: {} MiB decompressed, {:.0} MB compressed ({:.2}:1)",
        len >> 20,
        compressed as f64 / 1e6,
        len as f64 / compressed as f64
    );
    println!(
        "{:<45} {:>8} {:>10} {:>8}",
        "whole stream", "seconds", "MiB/s", "vs gzip"
    );
    for (name, secs) in &rows {
        println!(
            "{name:<45} {secs:>8.3} {:>10.0} {:>8.2}",
            len as f64 / secs / (1 << 20) as f64,
            gzip / secs
        );
    }
    println!(
        "gzindex random 1 MiB read (indexed): {random_ms:.1} ms each; header read on a fresh index: {:.2} ms, {} KiB inflated",
        hdr_t * 1000.0,
        fresh.stats().inflated >> 10
    );
    println!(
        "gzindex index: {} points, {:.1} MiB ({:.2}% of the data); cache {} MiB of {} MiB budget",
        s.points,
        s.index_bytes as f64 / (1 << 20) as f64,
        s.index_bytes as f64 / len as f64 * 100.0,
        s.cache_bytes >> 20,
        GzOptions::default().cache_bytes >> 20
    );
}
