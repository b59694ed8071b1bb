"""The short fuzz run: seeded mutants of headers, extensions and gzip streams through
`imgfs info`, `imgfs add` into a live mount and a whole read (scripts/fuzz.py has the oracle).

IMGFS_FUZZ_SEED and IMGFS_FUZZ_COUNT change the run; a failure names the seed and mutant id,
which `scripts/fuzz --seed S --only N` replays."""
import importlib.util
import os

import helpers

SEED = int(os.environ.get("IMGFS_FUZZ_SEED", "20250508"))
COUNT = int(os.environ.get("IMGFS_FUZZ_COUNT", "1000"))


def load_fuzz():
    spec = importlib.util.spec_from_file_location(
        "imgfs_fuzz", os.path.join(helpers.REPO, "scripts", "fuzz.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutants_get_a_clear_error_or_are_served_readably(imgfs_bin):
    fuzz = load_fuzz()
    summary = fuzz.run(SEED, count=COUNT, binary=imgfs_bin, rss_limit_mib=200.0, log=print)
    assert summary["mutants"] >= COUNT
    for note in summary["notes"]:
        print("note:", note)
    print(summary["counts"], f"RSS max {summary['rss_max_mib']:.1f} MiB")
    # Every path must have been exercised, or the oracle proves nothing.
    counts = summary["counts"]
    for key in ("info ok", "info refused", "add ok", "add refused", "served"):
        assert counts.get(key, 0) > 0, f"no mutant reached '{key}': {counts}"
    assert not summary["failures"], (
        f"{len(summary['failures'])} failing mutants (kept in {summary['outdir']}):\n"
        + "\n".join(summary["failures"][:40]))
