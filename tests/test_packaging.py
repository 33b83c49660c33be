"""The environments a user can install agree: requirements-lock.txt pins every dependency of
pyproject.toml (and of its test extra) at a version inside its range, environment.yml installs exactly
the lock, and the README's commands are what CI runs."""
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, version = line.split(";")[0].strip().split("==")
            pins[_name(name)] = version
    return pins


def test_the_lock_pins_every_dependency_within_its_range():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for req in map(Requirement, py["dependencies"] + py["optional-dependencies"]["test"]):
        name = _name(req.name)
        assert name in pins, f"{name} is not in requirements-lock.txt: compile it again (see its header)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{name}=={pins[name]} in the lock is outside pyproject.toml's {req}"


def test_environment_yml_installs_the_lock():
    text = (ROOT / "environment.yml").read_text()
    pip_block = [l.strip()[2:].strip() for l in text.split("- pip:", 1)[1].splitlines() if l.strip().startswith("- ")]
    assert pip_block == ["-r requirements-lock.txt", "-e .[test]"]
    assert "python=3.11" in text and "Python 3.11" in (ROOT / "requirements-lock.txt").read_text()


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in ("pip install -r requirements-lock.txt -e '.[test]'", "python3 -m pytest -q -n 2 --dist worksteal",
                "-m pytest -q -n 2 -m \"not slow\""):
        assert cmd in readme and cmd in ci, cmd
    assert "python3 -m pytest -q -n 2 -m \"not slow\"" in readme
    assert "iqa-kit reproduce --profile smoke" in readme
