"""The short stress run: reader processes (read, pread at random offsets, mmap) over several
images while edits land; every whole read is one version the editor produced, no read fails or
takes over 10 s, and the daemon's RSS stays bounded (scripts/stress.py has the checks; the long
run is `scripts/stress`: 16 readers, 100 images, 60 s)."""
import importlib.util
import os

import helpers


def load_stress():
    spec = importlib.util.spec_from_file_location(
        "imgfs_stress", os.path.join(helpers.REPO, "scripts", "stress.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readers_see_whole_versions_while_edits_land(imgfs_bin):
    stress = load_stress()
    s = stress.run(readers=4, images=10, seconds=8, seed=7, binary=imgfs_bin,
                   rss_limit_mib=200.0, max_read_s=10.0)
    assert s["edits"] >= 100, s
    assert s["reads"] >= 100, s
    assert s["versions"] > 10, "the edits made no new versions"
    assert not s["failures"], "\n".join(s["failures"][:40])
