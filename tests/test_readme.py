"""The README stays true: its settings table, its options, its commands and its files."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_vitattn.options import settings_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_the_settings_table_is_generated_from_the_settings():
    table = _between(README, "<!-- settings-table", "<!-- end settings-table -->")
    rows = "\n".join(line for line in table.splitlines() if line.startswith("|"))
    assert rows == settings_table(), (
        "README settings table is stale; replace its rows with:\n" + settings_table()
    )


def test_every_command_line_option_is_documented(pytester):
    help_text = pytester.runpytest("--help").stdout.str()
    flags = sorted(set(re.findall(r"--vitattn-[a-z-]+", help_text)))
    assert len(flags) >= 8
    missing = [flag for flag in flags if flag not in README]
    assert not missing, f"options missing from README.md: {missing}"


def test_the_two_set_up_commands_exist_and_ci_runs_the_test_command():
    assert "bash scripts/example.sh" in README and "bash scripts/test.sh" in README
    assert (ROOT / "scripts" / "example.sh").is_file()
    assert (ROOT / "scripts" / "test.sh").is_file()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_families_table_is_the_catalog():
    from pytest_vitattn.extract.catalog import markdown_table

    table = _between(README, "<!-- families-table -->", "<!-- end families-table -->")
    assert table == markdown_table(), (
        "README families table is stale: python -m pytest_vitattn.extract.catalog"
    )
