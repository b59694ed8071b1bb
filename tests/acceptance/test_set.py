"""`imgfs convert --set FIELD=VALUE` changes reach nibabel."""
import os

import nibabel as nib
import numpy as np
import pytest

import helpers


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("set_sources")
    rng = np.random.default_rng(7)
    aff = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, -20], [0, 0, 3.0, -30], [0, 0, 0, 1]])
    wide = rng.uniform(-5e5, 5e5, size=(8, 7, 6)).astype(np.float32)  # needs scaling in int16
    small = rng.uniform(0.0, 1.0, size=(8, 7, 6)).astype(np.float32)  # needs a slope < 1
    ints = rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)
    specials = rng.normal(100.0, 40.0, size=(9, 8, 7)).astype(np.float32)
    specials.flat[::17] = np.nan
    specials.flat[5::29] = np.inf
    specials.flat[11::31] = -np.inf
    positive = rng.uniform(0.0, 1.0, size=(7, 6, 5)).astype(np.float32)
    positive.flat[::13] = np.nan
    positive.flat[3::23] = -np.inf
    zeros = np.zeros((5, 4, 3), np.float32)
    zeros.flat[::7] = np.nan
    zeros.flat[2::11] = np.inf
    extra = {
        "shifted": rng.integers(1000, 1200, size=(6, 5, 4)).astype(np.int16),
        "negative": rng.integers(-200, 1, size=(6, 5, 4)).astype(np.int16),
        "bigints": rng.integers(-(2**31), 2**31 - 1, size=(6, 5, 4)).astype(np.int32),
        "positive": positive,
        "zeros": zeros,
    }
    paths = {
        "wide": str(d / "wide_f32.nii"),
        "small": str(d / "small_f32.nii.gz"),
        "ints": str(d / "ints_i16.nii"),
        "n2": str(d / "n2_f32.nii"),
        "specials": str(d / "specials_f32.nii"),
        "doubles": str(d / "doubles_f64.nii"),
    }
    nib.save(nib.Nifti1Image(wide, aff), paths["wide"])
    nib.save(nib.Nifti1Image(small, aff), paths["small"])
    nib.save(nib.Nifti1Image(ints, aff, dtype=np.int16), paths["ints"])
    nib.save(nib.Nifti2Image(wide, aff), paths["n2"])
    nib.save(nib.Nifti1Image(specials, aff), paths["specials"])
    nib.save(nib.Nifti1Image(wide.astype(np.float64) * 1.001, aff), paths["doubles"])
    for name, data in extra.items():
        paths[name] = str(d / f"{name}.nii")
        nib.save(nib.Nifti1Image(data, aff, dtype=data.dtype), paths[name])
    return paths


def do_convert(tmp_path, src, *sets, ext=".nii"):
    out = str(tmp_path / f"out{ext}")
    args = ["convert", src, out]
    for s in sets:
        args += ["--set", s]
    proc = helpers.imgfs(*args)
    assert proc.returncode == 0, f"imgfs {' '.join(args)}: {helpers.describe(proc)}"
    return out


@pytest.mark.parametrize("src", ["ints", "n2"])
def test_set_descrip(src, sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources[src], "descrip=hello from imgfs")
    assert helpers.hbytes(nib.load(out).header, "descrip") == b"hello from imgfs"


@pytest.mark.parametrize("src", ["wide", "small", "n2"])
def test_set_datatype_float32_to_int16(src, sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources[src], "datatype=int16")
    img = nib.load(out)
    assert img.get_data_dtype().name == "int16"
    hdr = helpers.raw_header(out)
    assert int(hdr["datatype"]) == 4
    slope, _ = hdr.get_slope_inter()
    step = 1.0 if slope is None else abs(float(slope))
    orig = nib.load(sources[src]).get_fdata()
    got = img.get_fdata()
    err = np.max(np.abs(got - orig))
    assert err <= step * (1 + 1e-6) + 1e-6 * np.max(np.abs(orig)), (
        f"values off by {err} (scaling step {step}, slope/inter {hdr.get_slope_inter()})"
    )


@pytest.mark.parametrize("src,dtype", [
    ("wide", "int16"), ("small", "uint8"), ("n2", "int16"), ("specials", "int16"),
    ("specials", "uint8"), ("doubles", "int16"), ("ints", "uint8"), ("ints", "int8"),
    ("wide", "int32"), ("shifted", "uint8"), ("shifted", "int8"), ("negative", "uint8"),
    ("bigints", "int16"), ("bigints", "uint16"), ("positive", "uint8"), ("positive", "int16"),
    ("zeros", "int16"), ("ints", "float32"),
])
def test_set_datatype_stores_what_nibabel_stores(src, dtype, sources, tmp_path, imgfs_bin):
    """The scaling and every stored integer equal nibabel's set_data_dtype + save."""
    out = do_convert(tmp_path, sources[src], f"datatype={dtype}")
    ref = str(tmp_path / "nibabel.nii")
    img = nib.load(sources[src])
    img.set_data_dtype(dtype)
    nib.save(img, ref)
    got, want = nib.load(out), nib.load(ref)
    # A loaded header's scaling is reset; the proxy holds what the file says.
    scaling = (got.dataobj.slope, got.dataobj.inter)
    assert scaling == (want.dataobj.slope, want.dataobj.inter), f"scaling {scaling}"
    a, b = got.dataobj.get_unscaled(), want.dataobj.get_unscaled()
    assert a.dtype == b.dtype == np.dtype(dtype)
    differ = np.flatnonzero(a != b)
    assert differ.size == 0, (
        f"{differ.size} stored values differ, first at {differ[:5]}: "
        f"{a.flat[differ[:5]]} vs nibabel {b.flat[differ[:5]]}"
    )


def test_set_datatype_to_float64_is_exact(sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources["ints"], "datatype=float64")
    img = nib.load(out)
    assert img.get_data_dtype().name == "float64"
    assert np.array_equal(img.get_fdata(), nib.load(sources["ints"]).get_fdata())


def test_set_scl_slope_inter(sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources["ints"], "scl_slope=2", "scl_inter=1")
    raw = np.asanyarray(nib.load(sources["ints"]).dataobj).astype(np.float64)
    got = nib.load(out).get_fdata()
    assert np.array_equal(got, raw * 2 + 1)
    assert helpers.raw_header(out).get_slope_inter() == (2.0, 1.0)


def test_set_sform(sources, tmp_path, imgfs_bin):
    out = do_convert(
        tmp_path, sources["ints"],
        "srow_x=1,0,0,-90", "srow_y=0,1.5,0,-126", "srow_z=0,0,2,-72", "sform_code=2",
    )
    img = nib.load(out)
    want = np.array([[1, 0, 0, -90], [0, 1.5, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
    assert np.allclose(img.affine, want, atol=1e-6), img.affine
    assert int(img.header["sform_code"]) == 2


def test_set_srow_x_only_changes_first_row(sources, tmp_path, imgfs_bin):
    before = nib.load(sources["ints"]).affine
    out = do_convert(tmp_path, sources["ints"], "srow_x=1,0,0,-90", "sform_code=2")
    after = nib.load(out).affine
    assert np.allclose(after[0], [1, 0, 0, -90], atol=1e-6), after
    assert np.allclose(after[1:], before[1:], atol=1e-6), after


def test_set_pixdim_changes_zooms(sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources["ints"], "pixdim=1,0.5,0.75,1.25,1,1,1,1")
    assert np.allclose(nib.load(out).header.get_zooms(), (0.5, 0.75, 1.25))


def test_set_qform_code(sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources["ints"], "qform_code=2")
    assert int(nib.load(out).header["qform_code"]) == 2


def test_set_on_pair_output(sources, tmp_path, imgfs_bin):
    out = do_convert(tmp_path, sources["ints"], "descrip=pair", "scl_slope=3", ext=".hdr")
    assert os.path.exists(out[:-4] + ".img")
    img = nib.load(out)
    assert helpers.hbytes(img.header, "descrip") == b"pair"
    raw = np.asanyarray(nib.load(sources["ints"]).dataobj).astype(np.float64)
    assert np.array_equal(img.get_fdata(), raw * 3)


@pytest.mark.parametrize("setting", ["nosuchfield=1", "datatype=notatype", "scl_slope=abc", "descrip"])
def test_set_bad_value_is_an_error(setting, sources, tmp_path, imgfs_bin):
    proc = helpers.imgfs("convert", sources["ints"], tmp_path / "out.nii", "--set", setting)
    assert proc.returncode == 1, helpers.describe(proc)
    assert proc.stderr.startswith("imgfs: "), proc.stderr
    assert "panicked" not in proc.stderr
