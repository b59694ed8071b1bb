"""Malformed inputs: a clean `imgfs: ...` error, exit 1, never a panic."""
import os

import pytest

import helpers

MALFORMED = os.path.join(helpers.REPO, "tests", "data", "malformed")

# (file in tests/data/malformed, keyword(s) expected in stderr, case-insensitive;
#  a tuple means any one of them). Regenerate the files with make_corpus.py.
CASES = [
    ("truncated_header.nii", "truncated"),
    ("truncated_data.nii", "too short"),
    ("bad_sizeof_hdr.nii", "sizeof_hdr"),
    ("dim_overflow.nii", "overflow"),
    ("dim_overflow_n2.nii", "overflow"),
    ("negative_vox_offset.nii", "vox_offset"),
    ("small_vox_offset.nii", "vox_offset"),
    ("ext_past_end.nii", "extension"),
    ("ext_esize_not16.nii", "extension"),
    ("ext_esize_small.nii", "extension"),
    ("corrupt_gzip.nii.gz", "gzip"),
    ("truncated_gzip.nii.gz", "gzip"),
    ("datatype_float128.nii", "datatype"),
    ("datatype_7.nii", "datatype"),
    ("n2_bad_magic.nii", "magic"),
    ("missing_img.hdr", ("no such file", "missing")),
    ("analyze_missing_img.hdr", ("no such file", "missing")),
    ("dim0_9.nii", "dim[0]"),
    ("negative_dim.nii", "dim["),
    ("gz_vox_offset_2g.nii.gz", "past the end of the gzip stream"),
    ("gz_vox_offset_1e30.nii.gz", "vox_offset"),
    ("gz_vox_offset_nan.nii.gz", "vox_offset"),
    ("gz_vox_offset_negative.nii.gz", "vox_offset"),
    ("gz_ext_esize_2g.nii.gz", "extension 0"),
    ("gz_dim_huge.nii.gz", "inflates to at most"),
]


def offending_path(path):
    """The path the message must name: the missing .img for a lone .hdr."""
    img = helpers.image_path(path)
    return img if img != path and not os.path.exists(img) else path


def check_error(proc, path, keywords):
    keywords = (keywords,) if isinstance(keywords, str) else keywords
    err = proc.stderr
    assert proc.returncode != 101 and "panicked" not in err, f"imgfs panicked: {err}"
    assert proc.returncode == 1, f"expected exit 1: {helpers.describe(proc)}"
    assert err.startswith("imgfs: "), f"stderr does not start with 'imgfs: ': {err!r}"
    want = offending_path(path)
    assert want in err, f"stderr does not name {want}: {err!r}"
    assert any(k.lower() in err.lower() for k in keywords), f"stderr lacks {' / '.join(keywords)!r}: {err!r}"


def test_cases_cover_the_directory():
    on_disk = {f for f in os.listdir(MALFORMED) if not f.endswith(".py")}
    listed = {name for name, _ in CASES}
    assert on_disk == listed, f"unlisted: {on_disk - listed}, missing: {listed - on_disk}"


@pytest.mark.parametrize("name,keywords", CASES, ids=[c[0] for c in CASES])
def test_info_rejects(name, keywords, imgfs_bin):
    path = os.path.join(MALFORMED, name)
    check_error(helpers.imgfs("info", path), path, keywords)
    check_error(helpers.imgfs("info", path, "--json"), path, keywords)


@pytest.mark.parametrize("name,keywords", CASES, ids=[c[0] for c in CASES])
def test_convert_rejects(name, keywords, imgfs_bin, tmp_path):
    path = os.path.join(MALFORMED, name)
    out = tmp_path / "out.nii"
    check_error(helpers.imgfs("convert", path, out), path, keywords)
    assert not out.exists(), "a failed convert left an output file"


def test_missing_input_file(imgfs_bin, tmp_path):
    path = str(tmp_path / "nope.nii")
    proc = helpers.imgfs("info", path)
    check_error(proc, path, ("no such file", "missing", "not found"))


def test_unknown_output_extension(imgfs_bin, tmp_path):
    src = os.path.join(helpers.NIB_DATA, "anatomical.nii")
    out = str(tmp_path / "out.xyz")
    proc = helpers.imgfs("convert", src, out)
    assert proc.returncode == 1 and proc.stderr.startswith("imgfs: "), helpers.describe(proc)
    assert out in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr
