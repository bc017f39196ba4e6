"""The README is the course's front page and tells the truth; the lessons keep the shape that makes them readable.
What a program can check of those rules, it checks here."""
import ast
import re

import pytest

from conftest import CODES, ROOT

README = (ROOT / "README.md").read_text()
SCRIPTS = sorted(path.name for path in CODES.glob("*.py"))
HELPERS = {"common.py", "mnist_plumbing.py"}
LESSONS = [name for name in SCRIPTS if name not in HELPERS and not name.endswith("_video.py")]


def test_every_asset_and_script_named_exists():
    named = set(re.findall(r"\b(?:assets|codes)/[\w./-]+\.\w+", README))
    assert named, "the README names no asset or script"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


def test_every_picture_in_assets_is_shown():
    shown = set(re.findall(r"assets/[\w.-]+\.(?:png|gif)", README))
    unused = sorted(f"assets/{path.name}" for path in (ROOT / "assets").glob("*.*") if path.suffix in (".png", ".gif")
                    and f"assets/{path.name}" not in shown)
    assert not unused, unused


def test_ci_runs_the_readme_test_commands():
    commands = re.findall(r"^(python3? -m pytest[^\n#]*?)\s*(?:#.*)?$", README, re.MULTILINE)
    assert any("--quality" in command for command in commands) and any("--quality" not in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text().replace("python3", "python").replace(" -q", "")
    assert any(command.strip() in ci for command in commands if "--quality" in command)


def test_readme_is_at_most_500_lines():
    assert len(README.splitlines()) <= 500


def test_every_lesson_is_in_the_lesson_map():
    table = README[README.index("| lesson |"):]
    table = table[:table.index("\n## ")]  # the map and the line under it, which names the two tools
    missing = [name for name in LESSONS if f"codes/{name}" not in table and f"`{name}`" not in table]
    assert not missing, missing


def test_every_lesson_has_a_section_with_its_command():
    for name in LESSONS:
        assert f"python codes/{name}" in README, name


@pytest.mark.parametrize("words", [r"\bsessions?\b", r"\bthis VM\b", r"\bscratch\b", r"\bseed documents?\b",
                                   r"\bthe issue\b", r"\bissues?\b", r"\bhelpers?\b", r"\bagents?\b"])
def test_the_readme_speaks_of_the_project_not_of_how_it_was_built(words):
    found = [line for line in README.splitlines() if re.search(words, line, re.IGNORECASE)]
    assert not found, found


@pytest.mark.parametrize("script", SCRIPTS)
def test_lines_are_at_most_100_characters(script):
    wide = [number for number, line in enumerate((CODES / script).read_text().splitlines(), 1) if len(line) > 100]
    assert not wide, f"{script}: lines {wide}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_opens_with_a_one_line_summary(script):
    """The docstring's first line stands alone (what the lesson adds), then a blank line, then the details."""
    doc = ast.get_docstring(ast.parse((CODES / script).read_text()), clean=False)
    assert doc, script
    lines = doc.splitlines()
    assert len(lines) > 2 and lines[0].strip() and not lines[1].strip(), lines[:2]


@pytest.mark.parametrize("script, limit", [("mnist_UNet.py", 200), *[(name, 150) for name in LESSONS
                                                                     if not name.startswith("mnist")]])
def test_lessons_stay_short(script, limit):
    non_blank = [line for line in (CODES / script).read_text().splitlines() if line.strip()]
    assert len(non_blank) <= limit, len(non_blank)


def test_no_measurement_notes_in_comments_or_help_texts():
    """Numbers measured on one machine ("13% faster", "200: 15.6% 7s") belong in the README, not in a lesson."""
    pattern = re.compile(r"#.*(\d+(\.\d+)?\s*%|\d+(\.\d+)?x (faster|slower|cheaper)|\bfaster\b|\bslower\b)")
    found = [f"{name}: {line.strip()}" for name in SCRIPTS for line in (CODES / name).read_text().splitlines()
             if pattern.search(line)]
    assert not found, found
