"""The README's Quick start is what CI runs: keep the two in step."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [
        line.strip() for line in section.splitlines() if line.strip().startswith("python3 -m venv")
    ]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("dvc repro")
    assert commands[1].endswith("python -m pytest")
    assert commands[1] in (REPO / ".ci" / "run").read_text()
