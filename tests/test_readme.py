"""The README's test command is exactly what CI runs."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(text):
    return [line.strip() for line in text.splitlines() if "pytest" in line and line.strip().startswith("pip install")]


def test_ci_runs_the_readme_test_command():
    readme = _command(ROOT.joinpath("README.md").read_text())
    ci = _command(ROOT.joinpath(".ci", "run").read_text())
    assert len(readme) == 1 and ci == readme
    assert readme[0].startswith("pip install torch==2.13.0 &&")
