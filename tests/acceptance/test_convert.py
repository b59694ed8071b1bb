"""`imgfs convert` writes files that nibabel, nifti_tool and MRtrix3 read as the input."""
import os

import nibabel as nib
import numpy as np
import pytest

import helpers
from conftest import ALL_INPUTS

SAME_EXT = (".nii.gz", ".hdr.gz", ".nii", ".hdr", ".img")


def own_ext(path):
    return next(e for e in SAME_EXT if path.endswith(e))


def converted_ok(convert, path, ext=".nii", *extra):
    proc, out = convert(path, ext, *extra)
    assert proc.returncode == 0, f"imgfs convert {path} out{ext} {' '.join(extra)}: {helpers.describe(proc)}"
    return out


def affine_of(path):
    img = nib.load(path)
    if helpers.is_cifti(img):
        return helpers.raw_header(path).get_best_affine()
    return img.affine


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_convert_to_nii_keeps_data_and_affine(ident, resolve, convert):
    src = resolve(ident)
    out = converted_ok(convert, src)
    a, b = helpers.load(src), helpers.load(out)
    assert a.shape == b.shape, f"shape {b.shape} != {a.shape}"
    da, db = helpers.data_of(a), helpers.data_of(b)
    if not helpers.arrays_equal(da, db):
        diff = "" if da.dtype.kind == "V" else f" (max abs diff {np.nanmax(np.abs(da - db))})"
        pytest.fail(f"data differ after convert{diff}")
    assert np.allclose(affine_of(src), affine_of(out), rtol=1e-6, atol=1e-6), (
        f"affine\nin:\n{affine_of(src)}\nout:\n{affine_of(out)}"
    )


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_convert_to_nii_keeps_dtype(ident, resolve, convert):
    src = resolve(ident)
    out = converted_ok(convert, src)
    want, got = helpers.raw_header(src), helpers.raw_header(out)
    assert helpers.dtype_name(got) == helpers.dtype_name(want)
    assert int(got["datatype"]) == int(want["datatype"])


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_convert_to_nii_nifti_tool_accepts(ident, resolve, convert):
    src = resolve(ident)
    out = converted_ok(convert, src)
    want = helpers.raw_header(src)
    if helpers.flavour(helpers.raw_header(out)) == "nifti2":
        dims = helpers.disp_nim_dims(out)
        n = int(want["dim"][0])
        assert dims[: n + 1] == [int(x) for x in want["dim"][: n + 1]], f"nifti_tool dims {dims}"
    else:
        proc = helpers.nifti_tool("-check_hdr", "-check_nim", "-infiles", out)
        text = proc.stdout + proc.stderr
        assert "header IS GOOD" in text, text
        assert "nifti_image IS GOOD" in text, text


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_convert_to_nii_mrinfo_agrees(ident, resolve, convert):
    src = resolve(ident)
    out = converted_ok(convert, src)
    hdr = helpers.raw_header(src)
    if int(hdr["datatype"]) in (128, 2304):
        pytest.skip("MRtrix3 3.0.3 has no RGB24/RGBA32 data type ('unknown data type')")
    proc = helpers.mrinfo("-size", "-spacing", out)
    if proc.returncode != 0 and "not in NIFTI-1.1 format" in proc.stderr and helpers.flavour(helpers.raw_header(out)) == "nifti2":
        pytest.skip("MRtrix3 3.0.3 refuses this NIfTI-2 .nii (FIELD-NOTES)")
    assert proc.returncode == 0, helpers.describe(proc)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    size = [int(x) for x in lines[0].split()]
    spacing = [float(x) for x in lines[1].split()]
    shape = list(hdr.get_data_shape())
    n = len(shape)
    # MRtrix pads images to 3 axes with size 1
    assert size[:n] == shape and all(s == 1 for s in size[n:]), f"mrinfo size {size} vs {shape}"
    zooms = [float(z) for z in hdr.get_zooms()]
    got = [abs(a) for a in spacing[:n]]
    assert np.allclose(got, zooms, rtol=1e-5), f"mrinfo spacing {spacing} vs {zooms}"


@pytest.mark.parametrize("ident", [i for i in ALL_INPUTS if not i.endswith(".img")])
def test_convert_to_own_format_keeps_header_bytes(ident, resolve, convert):
    src = resolve(ident)
    ext = own_ext(src)
    out = converted_ok(convert, src, ext)
    a, b = helpers.raw_header_bytes(src), helpers.raw_header_bytes(out)
    if a != b:
        hdr_a = helpers.raw_header(src)
        hdr_b = helpers.raw_header(out)
        diff = [k for k in hdr_a.keys() if not np.array_equal(np.asarray(hdr_a[k]), np.asarray(hdr_b[k]))
                and not (np.asarray(hdr_a[k]).dtype.kind == "f" and np.array_equal(hdr_a[k], hdr_b[k], equal_nan=True))]
        pytest.fail(f"header bytes differ after convert to {ext}; fields: {diff or 'byte order / padding'}")


def _expected_out_flavour(src_flavour, ext):
    if ext in (".nii", ".nii.gz"):
        return "nifti2" if src_flavour == "nifti2" else "nifti1"
    return src_flavour  # pairs: ni1 unless the input is NIfTI-2 or Analyze


FORMAT_SOURCES = ["corpus/anatomical.nii", "corpus/example_nifti2.nii.gz", "gen/spm_analyze.hdr",
                  "gen/n1_pair_gz.hdr.gz", "gen/n2_pair_i32.hdr", "gen/n1_ext.nii"]
FORMAT_EXTS = [".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img"]


@pytest.mark.parametrize("ext", FORMAT_EXTS)
@pytest.mark.parametrize("ident", FORMAT_SOURCES)
def test_convert_writes_format_of_extension(ident, ext, resolve, convert):
    src = resolve(ident)
    out = converted_ok(convert, src, ext)
    want = _expected_out_flavour(helpers.flavour(helpers.raw_header(src)), ext)
    gz = ext.endswith(".gz")
    hdr_file = helpers.header_path(out)
    data_file = helpers.image_path(hdr_file)
    assert os.path.exists(hdr_file), f"{hdr_file} not written"
    if data_file != hdr_file:
        assert os.path.exists(data_file), f"{data_file} not written"
    for f in {hdr_file, data_file}:
        with open(f, "rb") as fh:
            is_gz = fh.read(2) == b"\x1f\x8b"
        assert is_gz == gz, f"{f}: gzip={is_gz}, the name says {gz}"
    got = helpers.raw_header(out)
    assert helpers.flavour(got) == want
    if want != "analyze":
        magic = helpers.hbytes(got, "magic")
        single = ext in (".nii", ".nii.gz")
        assert magic[:2] == (b"n+" if single else b"ni"), f"magic {magic!r}"
    a, b = helpers.load(src), helpers.load(out)
    assert helpers.arrays_equal(helpers.data_of(a), helpers.data_of(b)), "data differ"
    assert np.allclose(affine_of(src), affine_of(out), rtol=1e-6, atol=1e-6), "affine differs"


@pytest.mark.parametrize("name", sorted(helpers.CORPUS_NO_DATA))
def test_convert_corpus_header_without_img_fails(name, nib_data, imgfs_bin, tmp_path):
    src = os.path.join(nib_data, name)
    missing = helpers.image_path(src)
    assert not os.path.exists(missing)
    proc = helpers.imgfs("convert", src, tmp_path / "out.nii")
    assert proc.returncode == 1, helpers.describe(proc)
    assert "panicked" not in proc.stderr
    assert proc.stderr.startswith("imgfs: "), proc.stderr
    assert missing in proc.stderr, f"stderr does not name {missing}: {proc.stderr}"
    assert "no such file" in proc.stderr.lower() or "missing" in proc.stderr.lower(), proc.stderr
    assert not (tmp_path / "out.nii").exists(), "a failed convert left an output file"
