"""The README tells the truth: every file it points to exists, and CI runs the test command it gives."""
import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_asset_and_script_named_exists():
    named = set(re.findall(r"\b(?:assets|codes)/[\w./-]+\.\w+", README))
    assert named, "the README names no asset or script"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


def test_ci_runs_the_readme_test_command():
    command = re.search(r"^(python3? -m pytest[^\n]*)$", README, re.MULTILINE).group(1)
    assert command in (ROOT / ".ci" / "run").read_text()
