"""`pip install ./python` in a fresh virtual environment gives both halves in one step: the
`imgfs` command (the Rust binary, carried by the wheel) and `import imgfs`, with nothing else on
PATH, and the client starts daemons with that binary, not another one found first on PATH.

The wheel is built with the `dev` profile (MATURIN_PEP517_ARGS), so it reuses the debug build
that scripts/test has just made instead of a release build of its own; the packaging is the same
as a user's `pip install ./python`, which builds with the release profile."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(argv, env, timeout=900):
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_pip_install_gives_the_command_and_the_package(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bindir = str(venv / "bin")
    build_env = {k: v for k, v in os.environ.items() if k not in ("IMGFS_BIN", "PYTHONPATH")}
    build_env["MATURIN_PEP517_ARGS"] = "--profile dev"
    run([f"{bindir}/python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
         os.path.join(REPO, "python")], build_env)

    bare = {"PATH": bindir}  # nothing else: no cargo, no IMGFS_BIN, no checkout on PATH
    version = run(["imgfs", "--version"], bare)
    assert version.strip() == "imgfs 0.1.0"
    where = run(["python", "-c", "import imgfs; print(imgfs.__file__)"], bare)
    assert where.startswith(str(venv)), where  # the installed package, not the checkout's

    # the environment's own binary wins over another `imgfs` earlier on PATH
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "imgfs").write_text("#!/bin/sh\nexit 3\n")
    (decoy / "imgfs").chmod(0o755)
    found = run(["python", "-c", "from imgfs._control import find_binary; print(find_binary())"],
                {"PATH": f"{decoy}:{bindir}"})
    assert found.strip() == os.path.join(bindir, "imgfs")
    typed = run(["python", "-c", "import imgfs, os; print(os.path.dirname(imgfs.__file__))"], bare)
    assert os.path.isfile(os.path.join(typed.strip(), "py.typed"))
