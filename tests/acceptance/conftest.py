"""Fixtures for the imgfs acceptance tests.

Inputs are named by id: ``corpus/<name>`` is a file of nibabel's test corpus,
``gen/<name>`` one written by imagegen.py (session fixture), ``withimg/<name>`` a
corpus header that ships without data, copied next to a generated .img.
"""
import os
import shutil

import numpy as np
import pytest

import helpers
import imagegen

IDS_CORPUS = [f"corpus/{n}" for n in helpers.CORPUS if n not in helpers.CORPUS_NO_DATA]
IDS_WITHIMG = [f"withimg/{n}" for n in sorted(helpers.CORPUS_NO_DATA)]
IDS_GEN = [f"gen/{n}" for n in imagegen.GENERATED]
ALL_INPUTS = IDS_CORPUS + IDS_WITHIMG + IDS_GEN


@pytest.fixture(scope="session")
def imgfs_bin():
    path = helpers.imgfs_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"imgfs binary not found at {path} (build it, or set IMGFS_BIN)")
    return path


@pytest.fixture(scope="session")
def nib_data():
    return helpers.NIB_DATA


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory):
    return imagegen.generate(str(tmp_path_factory.mktemp("generated")))


@pytest.fixture(scope="session")
def withimg_dir(tmp_path_factory):
    """Corpus headers shipped without data, each beside an .img of the right size."""
    d = str(tmp_path_factory.mktemp("withimg"))
    rng = np.random.default_rng(42)
    for name in sorted(helpers.CORPUS_NO_DATA):
        src = os.path.join(helpers.NIB_DATA, name)
        dst = os.path.join(d, name)
        shutil.copyfile(src, dst)
        hdr = helpers.raw_header(src)
        nbytes = int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
        offset = int(hdr.get_data_offset())
        data = rng.integers(0, 256, size=offset + nbytes, dtype=np.uint8)
        if hdr.get_data_dtype().kind == "f":  # keep floats finite and tame
            data[offset:] = 0
        with open(helpers.image_path(dst), "wb") as f:
            f.write(data.tobytes())
    return d


@pytest.fixture(scope="session")
def resolve(nib_data, generated_dir, withimg_dir):
    def _resolve(ident):
        kind, name = ident.split("/", 1)
        base = {"corpus": nib_data, "gen": generated_dir, "withimg": withimg_dir}[kind]
        return os.path.join(base, name)

    return _resolve


@pytest.fixture(scope="session")
def convert(imgfs_bin, tmp_path_factory):
    """convert(src, ext, *extra) -> (CompletedProcess, out_path); cached per arguments."""
    cache = {}
    root = tmp_path_factory.mktemp("converted")

    def _convert(src, ext, *extra):
        key = (src, ext, extra)
        if key not in cache:
            d = root / f"c{len(cache)}"
            d.mkdir()
            out = str(d / f"out{ext}")
            proc = helpers.imgfs("convert", src, out, *extra)
            cache[key] = (proc, out)
        return cache[key]

    return _convert


@pytest.fixture
def run_nifti_tool():
    return helpers.nifti_tool


@pytest.fixture
def run_mrinfo():
    return helpers.mrinfo
