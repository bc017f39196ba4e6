"""Shared fixtures: the lessons are importable as modules, and runnable as real subprocesses (`run`) or, faster,
inside the test process (`run_here`), which catches the same one-line errors without paying for a fresh import of
torch each time.

`python -m pytest` checks the math, the command line, the data path and a smoke run of every script. Tests marked
`quality` run lessons at their default settings and check the targets they print; they run only with
`python -m pytest --quality`, which is what CI runs."""
import contextlib
import gzip
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("MPLBACKEND", "Agg")  # before matplotlib is first imported: never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CODES = ROOT / "codes"
sys.path.insert(0, str(CODES))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--quality", action="store_true", help="also run every lesson at its default settings and "
                     "check its printed targets (several minutes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "quality: a default-settings run of a lesson, checked against its targets")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--quality"):
        skip = pytest.mark.skip(reason="a default-settings quality run: add --quality")
        for item in items:
            if "quality" in item.keywords:
                item.add_marker(skip)


def run_lesson(script, *args, timeout=600):
    """Run codes/<script> as a user would, headless; return the CompletedProcess (text mode)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(CODES / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_lesson_here(script, *args):
    """Run codes/<script> as __main__ inside this process, with its command line; return what `run_lesson` returns
    (returncode, stdout, stderr), a SystemExit's message going to stderr as Python would print it."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, sys.argv = sys.argv, [str(CODES / script), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(CODES / script), run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            err.write(stop.code + "\n")
            code = 1
        else:
            code = stop.code or 0
    finally:
        sys.argv = argv
        plt.close("all")
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture
def run():
    return run_lesson


@pytest.fixture
def run_here():
    return run_lesson_here


@pytest.fixture(scope="session", autouse=True)
def readme_assets_untouched():
    """assets/ holds the README's pictures, rewritten only on purpose: a test run that writes there (a lesson run
    without --assets) would replace them with the output of test settings."""
    def snapshot():
        return {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in (ROOT / "assets").iterdir()}

    before = snapshot()
    yield
    assert snapshot() == before, "a test wrote into assets/: pass --assets to every lesson run"


def write_idx(path, array):
    """A gzipped IDX file as MNIST ships it: magic 0x0000080N (unsigned bytes, N dims), N big-endian sizes, bytes."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype("uint8").tobytes()))


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """A folder with the four MNIST files in miniature (160 training and 120 test digits of random strokes), so that no
    test needs the real data set."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("t10k", 120)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28))
        for image, label in zip(images, labels):  # a bar whose position encodes the label, plus speckle
            image[4:24, 2 + 2 * label: 5 + 2 * label] = 255
            image += rng.uniform(0, 40, (28, 28))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images.clip(0, 255))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder
