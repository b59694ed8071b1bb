"""Valid images that nibabel's own test corpus lacks, written with nibabel.

Every entry of GENERATED is the name of the file that the tests hand to imgfs;
``generate(directory)`` writes all of them (plus their .img / .mat companions).
Data are small and deterministic.
"""
import gzip
import os

import nibabel as nib
import numpy as np

RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
RGBA = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])

# An oblique affine (rotation about z, anisotropic voxels) so that qform/sform
# round trips are really exercised.
_C, _S = np.cos(0.3), np.sin(0.3)
OBLIQUE = np.array(
    [
        [2.0 * _C, -3.0 * _S, 0.0, -45.5],
        [2.0 * _S, 3.0 * _C, 0.0, 12.25],
        [0.0, 0.0, 1.5, -7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SIMPLE = np.array(
    [[-2.0, 0, 0, 90.0], [0, 2.0, 0, -126.0], [0, 0, 2.5, -72.0], [0, 0, 0, 1]]
)


def _ramp(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "V":  # RGB / RGBA structured
        raw = rng.integers(0, 256, size=(n, len(dt.names)), dtype=np.uint8)
        out = np.zeros(n, dt)
        for i, name in enumerate(dt.names):
            out[name] = raw[:, i]
        return out.reshape(shape)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo = max(int(info.min), -(2**40))
        hi = min(int(info.max), 2**40)
        vals = rng.integers(lo, hi, size=n, dtype=np.int64 if dt != np.uint64 else np.uint64)
        vals[0], vals[-1] = info.min, info.max  # extremes survive the round trip
        return vals.astype(dt).reshape(shape)
    if dt.kind == "f":
        vals = rng.normal(100.0, 50.0, size=n).astype(dt)
        vals[1] = np.nan
        vals[2] = np.inf
        vals[3] = -np.inf
        vals[4] = -0.0
        return vals.reshape(shape)
    if dt.kind == "c":
        re = rng.normal(0, 10, size=n)
        im = rng.normal(0, 10, size=n)
        return (re + 1j * im).astype(dt).reshape(shape)
    raise ValueError(dt)


def _patch_header(path, **fields):
    """Set raw header fields of an existing image (single file or .hdr, gz or not)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        blob = f.read()
    klass = nib.Nifti2Header if int.from_bytes(blob[:4], "little") in (540, 0x1C020000) else nib.Nifti1Header
    hdr = klass.from_fileobj(nib.openers.Opener(path), check=False)
    for k, v in fields.items():
        hdr[k] = v
    import io

    buf = io.BytesIO()
    hdr.write_to(buf)
    new = buf.getvalue()[: hdr.sizeof_hdr] + blob[hdr.sizeof_hdr :]
    if path.endswith(".gz"):
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(new)
    else:
        with open(path, "wb") as f:
            f.write(new)


def _save(img, directory, name):
    nib.save(img, os.path.join(directory, name))


def _hdr(klass, endian="<"):
    return klass(endianness=endian)


def _img(klass, data, affine, endian="<"):
    """An image of class klass whose on-disk dtype and byte order are data's / endian."""
    return klass(data, affine, _hdr(klass.header_class, endian), dtype=data.dtype)


def g_n1_pair(d):
    img = nib.Nifti1Pair(_ramp((5, 4, 3, 2), "float32"), OBLIQUE)
    img.header.set_qform(OBLIQUE, 1)
    img.header.set_sform(OBLIQUE, 2)
    img.header["descrip"] = b"nifti1 pair"
    _save(img, d, "n1_pair_f32.hdr")


def g_n1_pair_gz(d):
    img = nib.Nifti1Pair(_ramp((6, 5, 4), "int16", 1), SIMPLE)
    _save(img, d, "n1_pair_gz.hdr.gz")


def g_n1_pair_be(d):
    img = _img(nib.Nifti1Pair, _ramp((4, 4, 3), "uint16", 2), SIMPLE, ">")
    _save(img, d, "n1_pair_be.hdr")


def g_n2_pair(d):
    img = nib.Nifti2Pair(_ramp((5, 4, 3), "int32", 3), OBLIQUE)
    _save(img, d, "n2_pair_i32.hdr")


def g_n2_pair_gz(d):
    img = nib.Nifti2Pair(_ramp((3, 4, 5, 2), "float32", 4), SIMPLE)
    _save(img, d, "n2_pair_gz.hdr.gz")


def g_n2_single(d):
    img = nib.Nifti2Image(_ramp((4, 3, 5), "float64", 5), OBLIQUE)
    _save(img, d, "n2_f64.nii")


def g_n2_be(d):
    img = _img(nib.Nifti2Image, _ramp((4, 3, 2), "int16", 6), SIMPLE, ">")
    _save(img, d, "n2_be.nii")


def g_spm_analyze(d):
    # Spm99AnalyzeImage writes the affine to a MATLAB .mat sidecar.
    img = nib.Spm99AnalyzeImage(_ramp((5, 4, 3), "int16", 7), OBLIQUE)
    _save(img, d, "spm_analyze.hdr")
    assert os.path.exists(os.path.join(d, "spm_analyze.mat"))


def g_spm_analyze_gz(d):
    # for .hdr.gz nibabel writes (and reads) the sidecar as .mat.gz
    img = nib.Spm99AnalyzeImage(_ramp((4, 3, 5), "float32", 21), OBLIQUE)
    _save(img, d, "spm_analyze_gz.hdr.gz")


def g_analyze_plain(d):
    img = nib.AnalyzeImage(_ramp((6, 5, 4), "uint8", 8), np.diag([3.0, 3.0, 4.0, 1.0]))
    _save(img, d, "analyze_u8.hdr")


def g_analyze_be(d):
    img = _img(nib.AnalyzeImage, _ramp((4, 5, 3), "float32", 9), np.diag([2.0, 2.0, 2.0, 1.0]), ">")
    _save(img, d, "analyze_be_f32.hdr")


def g_n1_be_scaled(d):
    img = _img(nib.Nifti1Image, _ramp((5, 4, 3), "int16", 10), SIMPLE, ">")
    path = os.path.join(d, "n1_be_scaled.nii")
    nib.save(img, path)
    _patch_header(path, scl_slope=0.5, scl_inter=-3.0)


def g_n1_scaled(d):
    img = nib.Nifti1Image(_ramp((6, 5, 4), "uint8", 11), OBLIQUE)
    path = os.path.join(d, "n1_scaled_u8.nii")
    nib.save(img, path)
    _patch_header(path, scl_slope=2.5, scl_inter=10.0)


def g_n1_scaled_gz(d):
    img = nib.Nifti1Image(_ramp((6, 5, 4, 3), "int16", 12), SIMPLE)
    path = os.path.join(d, "n1_scaled.nii.gz")
    nib.save(img, path)
    _patch_header(path, scl_slope=0.001, scl_inter=0.0)


def g_n1_slope_only(d):
    img = nib.Nifti1Image(_ramp((4, 4, 4), "int32", 13), SIMPLE)
    path = os.path.join(d, "n1_inter_only.nii")
    nib.save(img, path)
    _patch_header(path, scl_slope=1.0, scl_inter=7.0)


def g_n1_ext(d):
    img = nib.Nifti1Image(_ramp((4, 3, 2), "float32", 14), OBLIQUE)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"made by imgfs tests"))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"<?xml version='1.0'?><AFNI_attributes/>" + b"x" * 40))
    _save(img, d, "n1_ext.nii")


def g_n2_ext(d):
    img = nib.Nifti2Image(_ramp((4, 3, 2), "int16", 15), OBLIQUE)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"nifti2 with an extension"))
    _save(img, d, "n2_ext.nii.gz")


def g_n1_nocodes(d):
    img = nib.Nifti1Image(_ramp((7, 6, 5), "int16", 16), SIMPLE)
    img.header.set_qform(None, 0)
    img.header.set_sform(None, 0)
    img.header.set_zooms((1.5, 2.0, 2.5))
    _save(img, d, "n1_nocodes.nii")


def g_n1_qform_only(d):
    img = nib.Nifti1Image(_ramp((5, 6, 4), "float32", 17), OBLIQUE)
    img.header.set_qform(OBLIQUE, 1)
    img.header.set_sform(None, 0)
    _save(img, d, "n1_qform_only.nii")


def g_n1_5d(d):
    img = nib.Nifti1Image(_ramp((3, 2, 2, 1, 4), "float32", 18), SIMPLE)
    img.header.set_intent("vector")
    _save(img, d, "n1_5d.nii")


def g_n1_2d(d):
    img = nib.Nifti1Image(_ramp((9, 7), "uint8", 19), SIMPLE)
    _save(img, d, "n1_2d.nii")


DTYPES = [
    "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "complex64", "complex128", "RGB", "RGBA",
]


def _g_dtype(name):
    def g(d):
        dt = {"RGB": RGB, "RGBA": RGBA}.get(name, name)
        img = nib.Nifti1Image(_ramp((4, 3, 2), dt, 20), SIMPLE, dtype=dt)
        _save(img, d, f"dtype_{name}.nii")

    g.__name__ = f"g_dtype_{name}"
    return g


_BUILDERS = [
    g_n1_pair, g_n1_pair_gz, g_n1_pair_be, g_n2_pair, g_n2_pair_gz, g_n2_single, g_n2_be,
    g_spm_analyze, g_spm_analyze_gz, g_analyze_plain, g_analyze_be, g_n1_be_scaled, g_n1_scaled, g_n1_scaled_gz,
    g_n1_slope_only, g_n1_ext, g_n2_ext, g_n1_nocodes, g_n1_qform_only, g_n1_5d, g_n1_2d,
] + [_g_dtype(n) for n in DTYPES]

# Names handed to imgfs. The .img alias checks that a pair can be named by its data file.
GENERATED = [
    "n1_pair_f32.hdr", "n1_pair_f32.img", "n1_pair_gz.hdr.gz", "n1_pair_be.hdr",
    "n2_pair_i32.hdr", "n2_pair_gz.hdr.gz", "n2_f64.nii", "n2_be.nii",
    "spm_analyze.hdr", "spm_analyze.img", "spm_analyze_gz.hdr.gz", "analyze_u8.hdr", "analyze_be_f32.hdr",
    "n1_be_scaled.nii", "n1_scaled_u8.nii", "n1_scaled.nii.gz", "n1_inter_only.nii",
    "n1_ext.nii", "n2_ext.nii.gz", "n1_nocodes.nii", "n1_qform_only.nii", "n1_5d.nii",
    "n1_2d.nii",
] + [f"dtype_{n}.nii" for n in DTYPES]


def generate(directory):
    os.makedirs(directory, exist_ok=True)
    for b in _BUILDERS:
        b(directory)
    missing = [n for n in GENERATED if not os.path.exists(os.path.join(directory, n))]
    assert not missing, missing
    return directory


if __name__ == "__main__":
    import sys

    generate(sys.argv[1])
