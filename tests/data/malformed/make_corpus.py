#!/usr/bin/env python3
"""Write the malformed NIfTI/Analyze files of this directory.

Uses only the standard library, numpy and nibabel; the output is deterministic
(gzip mtime 0), so re-running it leaves `git status` clean.  Each file breaks one
rule; tests/acceptance/test_malformed.py holds the table of expected keywords.

    python tests/data/malformed/make_corpus.py [OUTDIR]
"""
import gzip
import io
import os
import struct
import sys

import nibabel as nib
import numpy as np

OUT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))

# byte offsets in the NIfTI-1 / Analyze header
N1_SIZEOF_HDR, N1_DIM, N1_DATATYPE, N1_BITPIX, N1_VOX_OFFSET = 0, 40, 70, 72, 108
# byte offsets in the NIfTI-2 header
N2_MAGIC, N2_DIM = 4, 16


def nifti1_bytes(shape=(10, 10, 10), dtype=np.int16, extensions=()):
    data = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=dtype)
    for code, content in extensions:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(code, content))
    return bytearray(img.to_bytes())


def nifti2_bytes(shape=(4, 4, 4), dtype=np.int16):
    data = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return bytearray(nib.Nifti2Image(data, np.eye(4), dtype=dtype).to_bytes())


def put(buf, offset, fmt, *values):
    struct.pack_into("<" + fmt, buf, offset, *values)


def write(name, blob):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes(blob))


def write_gz(name, blob):
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as g:
        g.write(bytes(blob))
    write(name, raw.getvalue())
    return raw.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)

    # 1. header cut at 100 bytes
    write("truncated_header.nii", nifti1_bytes()[:100])

    # 2. header says 10x10x10 int16 (2000 bytes of data); only 500 follow
    b = nifti1_bytes()
    write("truncated_data.nii", b[: 352 + 500])

    # 3. sizeof_hdr neither 348 nor 540, in either byte order
    b = nifti1_bytes((4, 4, 4))
    put(b, N1_SIZEOF_HDR, "i", 349)
    write("bad_sizeof_hdr.nii", b)

    # 4. dims whose product times the voxel size overflows 2**64 bytes
    b = nifti1_bytes((2, 2, 2), np.float64)
    put(b, N1_DIM, "8h", 7, 32767, 32767, 32767, 32767, 32767, 32767, 32767)
    write("dim_overflow.nii", b)
    b = nifti2_bytes((2, 2, 2), np.float64)
    put(b, N2_DIM, "8q", 3, 2**31, 2**31, 2**31, 1, 1, 1, 1)  # 2**93 voxels
    write("dim_overflow_n2.nii", b)

    # 5. vox_offset negative / inside the header of a single file
    b = nifti1_bytes((4, 4, 4))
    put(b, N1_VOX_OFFSET, "f", -352.0)
    write("negative_vox_offset.nii", b)
    b = nifti1_bytes((4, 4, 4))
    put(b, N1_VOX_OFFSET, "f", 100.0)
    write("small_vox_offset.nii", b)

    # 6. extensions: esize past the end of the file, not a multiple of 16, below 8
    b = nifti1_bytes((2, 2, 2), np.uint8, [(6, b"comment!")])  # one 16-byte extension at 352
    assert struct.unpack_from("<i", b, 352)[0] == 16
    put(b, 352, "i", 4096)
    write("ext_past_end.nii", b)
    # one extension of esize 24 (8 + 16 bytes) ending exactly at vox_offset 376: a reader that
    # does not insist on multiples of 16 would take it as valid
    b = nifti1_bytes((2, 2, 2), np.uint8)
    ext = struct.pack("<ii", 24, 6) + b"sixteen chars!!!"
    b = b[:352] + ext + b[352:]
    put(b, N1_VOX_OFFSET, "f", 376.0)
    put(b, 348, "4B", 1, 0, 0, 0)
    write("ext_esize_not16.nii", b)
    b = nifti1_bytes((2, 2, 2), np.uint8, [(6, b"comment!")])
    put(b, 352, "i", 4)
    write("ext_esize_small.nii", b)

    # 7. gzip: valid gzip member header followed by garbage; a stream cut short
    good = write_gz("_tmp.nii.gz", nifti1_bytes((16, 16, 16), np.float32))
    os.remove(os.path.join(OUT, "_tmp.nii.gz"))
    rng = np.random.default_rng(1)
    write("corrupt_gzip.nii.gz", good[:10] + rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    write("truncated_gzip.nii.gz", good[: len(good) // 2])

    # 8. unsupported datatypes
    b = nifti1_bytes((2, 2, 2), np.float64)
    put(b, N1_DATATYPE, "hh", 1536, 128)  # float128
    b += bytes(8 * 16 - 8 * 8)  # enough data for 8 voxels of 16 bytes
    write("datatype_float128.nii", b)
    b = nifti1_bytes((2, 2, 2), np.uint8)
    put(b, N1_DATATYPE, "hh", 7, 8)  # 7 is no NIfTI datatype
    write("datatype_7.nii", b)

    # 9. NIfTI-2 whose magic is wrong (sizeof_hdr 540 says NIfTI-2)
    b = nifti2_bytes()
    b[N2_MAGIC : N2_MAGIC + 4] = b"n+3\0"
    write("n2_bad_magic.nii", b)

    # 10. a .hdr whose .img does not exist (NIfTI-1 pair and Analyze)
    pair = nib.Nifti1Pair(np.zeros((4, 4, 4), np.int16), np.eye(4))
    write("missing_img.hdr", pair.header.binaryblock)
    ana = nib.AnalyzeImage(np.zeros((4, 4, 4), np.int16), np.eye(4))
    write("analyze_missing_img.hdr", ana.header.binaryblock)

    # 11. dim[0] = 9
    b = nifti1_bytes((4, 4, 4))
    put(b, N1_DIM, "h", 9)
    write("dim0_9.nii", b)

    # 12. a negative dimension
    b = nifti1_bytes((4, 4, 4))
    put(b, N1_DIM + 4, "h", -4)  # dim[2]
    write("negative_dim.nii", b)

    # 13. gzip: size fields no larger than what the stream holds may be believed, and nothing
    # is sized by them before the stream shows it: vox_offset 2**31 (the stream ends long
    # before), 1e30, NaN and negative; an extension esize of 2**31 - 16 inside a vox_offset
    # just as large; dims that ask for 2**40 bytes of data from a stream of a few hundred
    for name, offset in [("gz_vox_offset_2g.nii.gz", 2.0**31), ("gz_vox_offset_1e30.nii.gz", 1e30),
                         ("gz_vox_offset_nan.nii.gz", float("nan")),
                         ("gz_vox_offset_negative.nii.gz", -352.0)]:
        b = nifti1_bytes((4, 4, 4))
        put(b, N1_VOX_OFFSET, "f", offset)
        write_gz(name, b)
    b = nifti1_bytes((2, 2, 2), np.uint8, [(6, b"comment!")])
    put(b, 352, "i", 2**31 - 16)
    put(b, N1_VOX_OFFSET, "f", 2.0**31 + 1024)
    write_gz("gz_ext_esize_2g.nii.gz", b)
    b = nifti1_bytes((4, 4, 4), np.uint8)
    put(b, N1_DIM, "8h", 4, 16384, 16384, 4096, 1, 1, 1, 1)  # 2**40 bytes of uint8
    write_gz("gz_dim_huge.nii.gz", b)


if __name__ == "__main__":
    main()
