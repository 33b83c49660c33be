"""environment.yml and pyproject.toml must list the same dependencies."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in py["dependencies"] + py["optional-dependencies"]["test"]}
    text = (ROOT / "environment.yml").read_text()
    pip_block = text.split("- pip:", 1)[1]          # the pip section mirrors pyproject
    lines = [l.strip()[2:].strip() for l in pip_block.splitlines()
             if l.strip().startswith("- ") and not l.strip().startswith("- -e")]
    pip_reqs = {_name(r): r.replace(" ", "") for r in lines
                if r not in ("pip",) and not r.startswith(("python=", "pip:"))}
    assert set(pip_reqs) == set(wanted), (set(pip_reqs) ^ set(wanted))
    for name, req in wanted.items():
        assert pip_reqs[name] == req, f"{name}: pyproject {req} vs environment.yml {pip_reqs[name]}"


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = "python3 -m pytest -q -n 2"
    assert test_cmd in readme and test_cmd in ci
    assert "iqa-kit reproduce --profile smoke" in readme
