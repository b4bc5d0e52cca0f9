"""A non-editable install carries everything the service reads from disk: templates and migrations.

The wheel is built from a copy of exactly what docker/Dockerfile copies (pyproject.toml, README.md,
mailbridge/), installed with ``--no-deps`` into a fresh virtual environment whose only other path is
the test venv's site-packages (added by a ``.pth`` line, so the editable install's own hooks are
never processed), and run from an empty directory: nothing can come from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from mailbridge.domain.db import head_revision, make_engine
from mailbridge.outbound.render import LOCALES, PARTS, Renderer

ROOT = Path(__file__).resolve().parent.parent

# The data every template is rendered with comes from the installed package itself
# (mailbridge.outbound.catalog.sample_context: realistic values of every variable each template may
# use), so a template that needs a variable the catalog lacks fails here, from the wheel.
SCRIPT = """
import json, sys
from pathlib import Path
import mailbridge
from mailbridge.outbound.catalog import sample_context
from mailbridge.outbound.render import Renderer

renderer = Renderer()
report = {"package": mailbridge.__file__, "templates": str(renderer.templates_dir),
          "problems": renderer.problems(), "rendered": {}, "files": []}
for path in sorted(renderer.templates_dir.rglob("*")):
    if path.is_file():
        report["files"].append(path.relative_to(renderer.templates_dir).as_posix())
for name in renderer.names():
    for lang in ("en", "fr"):
        rendered = renderer.render(name, lang, sample_context(name, lang))
        report["rendered"][f"{lang}/{name}"] = [len(rendered.subject), len(rendered.text), len(rendered.html)]
print(json.dumps(report))
"""


def _fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    )
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_the_wheel_alone_carries_templates_and_migrations(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mailbridge", source / "mailbridge", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = wheels.glob("mailbridge-*.whl")
    venv = _fresh_venv(tmp_path)
    pip_into_venv = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip_into_venv, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILBRIDGE_", "PYTHON"))}
    env["MAILBRIDGE_DATA_DIR"] = str(elsewhere / "var")

    upgraded = subprocess.run(
        [str(venv / "bin" / "mailbridge"), "db", "upgrade"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    head = head_revision(make_engine("sqlite://"))
    assert upgraded.stdout.strip().endswith(f"created at revision {head} (was empty)")

    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(SCRIPT)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["package"].startswith(str(venv)), report["package"]  # not the source tree
    assert report["templates"].startswith(str(venv))
    assert report["problems"] == []
    # every template file of the source tree is in the wheel (a new folder or locale included)
    here = Renderer()
    source_files = sorted(
        p.relative_to(here.templates_dir).as_posix() for p in here.templates_dir.rglob("*") if p.is_file()
    )
    assert report["files"] == source_files
    assert set(report["rendered"]) == {f"{lang}/{name}" for lang in LOCALES for name in here.names()}
    assert all(all(size > 0 for size in sizes) for sizes in report["rendered"].values())


def test_missing_templates_are_named_not_found_at_the_first_notification(tmp_path: Path) -> None:
    broken = tmp_path / "templates"
    shutil.copytree(Renderer().templates_dir, broken)
    (broken / "fr" / "notice.mjml").unlink()
    (broken / "en" / "forward.txt").write_text("{% if %}")
    problems = Renderer(broken).problems()
    assert any(p.startswith("fr/notice.mjml: TemplateNotFound") for p in problems)
    assert any(p.startswith("en/forward.txt: TemplateSyntaxError") for p in problems)
    assert Renderer(tmp_path / "nowhere").problems() == [f"no templates folder at {tmp_path / 'nowhere'}"]
    assert all(
        Renderer().templates_dir.joinpath(lang, f"notice{part}").is_file()
        for lang in LOCALES
        for part in PARTS
    )
