"""Every console script in pyproject's ``[project.scripts]``, run as installed: ``--version``
prints ``<name> <version>`` and exits 0, and ``--help`` (of each subcommand too) shows a flag
as a flag, plain click help with no ``<bool>``. The names come from the table, so a script
added without these fails here."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = Path(sys.executable).parent / name  # the console script beside this venv's python
    if not path.is_file():
        pytest.fail(f"{name} is in [project.scripts] but not installed: pip install -e .")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=300)


def subcommands(help_text: str) -> list[str]:
    """The command names a group's plain help lists under ``Commands:``."""
    _, found, listing = help_text.partition("\nCommands:\n")
    return re.findall(r"^  (\S+)", listing, re.M) if found else []


def flag_line(help_text: str, flag: str) -> str | None:
    """The help line of ``flag`` when it reads as a flag: its name, then its help, no metavar."""
    match = re.search(rf"^ +{re.escape(flag)} {{2,}}\w.*$", help_text, re.M)
    return match.group(0) if match else None


def test_the_table_lists_the_scripts():
    assert {"heke-run", "heke-export", "heke-features", "heke-ref-demo"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_version_prints_the_name_and_the_package_version(name):
    done = run_script(name, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{name} {importlib.metadata.version('heke')}"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_flags_as_flags(name):
    done = run_script(name, "--help")
    assert done.returncode == 0, done.stderr
    helps = {name: done.stdout}
    for command in subcommands(done.stdout):
        sub = run_script(name, command, "--help")
        assert sub.returncode == 0, sub.stderr
        helps[f"{name} {command}"] = sub.stdout
    for prog, text in helps.items():
        assert "<bool>" not in text and "BOOLEAN" not in text, f"{prog} --help:\n{text}"
        assert "╭" not in text, f"{prog} --help is rich, not plain:\n{text}"
        assert flag_line(text, "--version"), f"{prog} --help has no --version flag:\n{text}"


def test_heke_run_resume_reads_as_a_flag():
    text = run_script("heke-run", "--help").stdout
    assert flag_line(text, "--resume"), text
    assert "--resume <" not in text


def test_groups_are_checked_command_by_command():
    text = run_script("heke-features", "--help").stdout
    assert {"extract", "from-pickle", "to-pickle"} <= set(subcommands(text))
    done = run_script("heke-features", "extract", "--version")  # subcommands answer it too
    assert done.stdout.splitlines() == [f"heke-features {importlib.metadata.version('heke')}"]
