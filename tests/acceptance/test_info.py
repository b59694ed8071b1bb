"""`imgfs info --json` agrees with nibabel on every valid input."""
import nibabel as nib
import numpy as np
import pytest

import helpers
from conftest import ALL_INPUTS


def expected(path):
    img = helpers.load(path)
    hdr = helpers.raw_header(path)
    affine = hdr.get_best_affine() if helpers.is_cifti(nib.load(path)) else img.affine
    return img, hdr, np.asarray(affine, dtype=float)


def _close(a, b, tol=1e-6):
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=tol, atol=tol)


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_info_matches_nibabel(ident, resolve, imgfs_bin):
    path = resolve(ident)
    info = helpers.info_json(path)
    img, hdr, affine = expected(path)

    assert list(info["shape"]) == list(hdr.get_data_shape()), "shape"
    assert info["dtype"] == helpers.dtype_name(hdr), "dtype"
    assert info["datatype"] == int(hdr["datatype"]), "datatype code"
    assert np.asarray(info["affine"]).shape == (4, 4), "affine is not 4x4"
    assert _close(info["affine"], affine), f"affine\nimgfs:\n{np.asarray(info['affine'])}\nnibabel:\n{affine}"
    assert _close(info["zooms"], hdr.get_zooms()), f"zooms {info['zooms']} != {hdr.get_zooms()}"

    slope, inter = hdr.get_slope_inter()
    if slope is None:
        assert info["scl_slope"] is None, f"scl_slope {info['scl_slope']} but nibabel: no scaling"
    else:
        assert info["scl_slope"] is not None and _close(info["scl_slope"], slope), f"scl_slope {info['scl_slope']} != {slope}"
    if inter is None:
        assert info["scl_inter"] is None, f"scl_inter {info['scl_inter']} but nibabel: None"
    else:
        assert info["scl_inter"] is not None and _close(info["scl_inter"], inter), f"scl_inter {info['scl_inter']} != {inter}"


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_info_describes_file(ident, resolve, imgfs_bin):
    path = resolve(ident)
    info = helpers.info_json(path)
    hdr = helpers.raw_header(path, check=False)  # raw values, e.g. pixdim[0] as stored
    fields = hdr.keys()

    # a pair may be named by its .img; reporting the .hdr is fine too
    assert info["path"] in (path, helpers.header_path(path))
    assert info["format"] == helpers.flavour(hdr)
    magic = helpers.hbytes(hdr, "magic") if "magic" in fields else b""
    assert info["file_kind"] == ("single" if magic.startswith(b"n+") else "pair")
    assert info["compressed"] is path.endswith(".gz")
    assert info["byte_order"] == {"<": "little", ">": "big"}[hdr.endianness]
    assert _close(info["pixdim"], hdr["pixdim"]) and len(info["pixdim"]) == 8, f"pixdim {info['pixdim']}"
    assert info["qform_code"] == (int(hdr["qform_code"]) if "qform_code" in fields else 0)
    assert info["sform_code"] == (int(hdr["sform_code"]) if "sform_code" in fields else 0)
    assert float(info["vox_offset"]) == float(hdr["vox_offset"])
    assert info["descrip"] in helpers.text_forms(helpers.hbytes(hdr, "descrip"))
    exts = [(e.get_code(), e.get_sizeondisk()) for e in getattr(hdr, "extensions", [])]
    assert [(e["code"], e["size"]) for e in info["extensions"]] == exts, "extensions (code, esize)"


def _json_matches(got, want):
    want = np.asarray(want)
    if want.dtype.kind == "S":
        raw = bytes(want.item())
        if isinstance(got, int) and want.dtype.itemsize == 1:  # Analyze char used as a number (orient)
            return got == (raw[0] if raw else 0)
        return isinstance(got, str) and got.rstrip("\0") in helpers.text_forms(raw)
    if got is None:  # serde_json writes NaN as null
        return bool(np.all(np.isnan(want.astype(float))))
    got = np.asarray(got, dtype=float)
    if got.shape != want.shape:
        return False
    return bool(np.allclose(got, want.astype(float), rtol=1e-6, atol=1e-6, equal_nan=True))


@pytest.mark.parametrize("ident", ALL_INPUTS)
def test_info_raw_header_fields(ident, resolve, imgfs_bin):
    path = resolve(ident)
    raw = helpers.info_json(path).get("header")
    assert isinstance(raw, dict), "info has no 'header' object"
    hdr = helpers.raw_header(path, check=False)
    missing = [k for k in hdr.keys() if k not in raw]
    assert not missing, f"header fields missing (nibabel names): {missing}"
    wrong = {k: (raw[k], hdr[k]) for k in hdr.keys() if not _json_matches(raw[k], hdr[k])}
    assert not wrong, f"header fields that differ from nibabel (imgfs, nibabel): {wrong}"


def test_info_without_json_is_readable(resolve, imgfs_bin):
    path = resolve("corpus/anatomical.nii")
    proc = helpers.imgfs("info", path)
    assert proc.returncode == 0, helpers.describe(proc)
    assert "33" in proc.stdout and "41" in proc.stdout and "25" in proc.stdout, proc.stdout


def test_output_cut_short_by_a_closed_pipe_ends_quietly(imgfs_bin):
    """`imgfs info F | head -1`: the command ends as shell tools do (SIGPIPE), no panic."""
    import subprocess

    path = f"{helpers.NIB_DATA}/example4d.nii.gz"
    proc = subprocess.run(f"'{imgfs_bin}' info '{path}' | head -c 1 >/dev/null; "
                          "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=60)
    assert "panicked" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() in ("0", "141"), proc  # done before the cut, or SIGPIPE
