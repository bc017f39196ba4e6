"""Shared fixtures: the lessons are importable as modules, and runnable as real subprocesses."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODES = ROOT / "codes"
sys.path.insert(0, str(CODES))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_lesson(script, *args, timeout=600):
    """Run codes/<script> as a user would, headless; return the CompletedProcess (text mode)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(CODES / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run():
    return run_lesson
