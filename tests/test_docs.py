"""The docs stay true: generated pages current, one version everywhere, short front pages, guides that run.

A guide's shell block marked ``<!-- docs-test: ... -->`` on the line before it is run here as written, line by
line, in a folder holding what such blocks name: ``photos/`` (class folders of generated photos), ``new.jpg``
and ``examples/cifar10-sample`` (the bundled sample), with ``imgclf`` on the PATH.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
from conftest import make_class_folder, make_image
from processes import CLI_ENV, run_shell

import imgclf

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKED = re.compile(r"<!-- docs-test:[^>]*-->\n```bash\n(.*?)```", re.S)


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert _gen_docs().main(["--check"]) == 0, capsys.readouterr().err


def test_every_command_has_a_reference_entry() -> None:
    import typer.main

    from imgclf.cli import app

    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    names = [name for name, command in root.commands.items() if not hasattr(command, "commands")]
    names += [f"{group} {sub}" for group, command in root.commands.items() for sub in getattr(command, "commands", {})]
    missing = [name for name in names if f"## `imgclf {name}`" not in page]
    assert not missing and len(names) >= 18


def test_the_version_agrees_between_package_changelog_and_build() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M)
    assert released and released[0] == imgclf.__version__
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'attr = "imgclf.version.__version__"' in pyproject


def test_front_pages_stay_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
    assert len((DOCS / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines()) <= 250


def _marked_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, block in enumerate(MARKED.findall(page.read_text(encoding="utf-8"))):
            blocks.append((f"{page.relative_to(DOCS)}#{number}", block))
    return blocks


def test_some_guide_blocks_are_marked() -> None:
    assert len(_marked_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(("where", "block"), _marked_blocks(), ids=[where for where, _ in _marked_blocks()])
def test_marked_guide_commands_run_as_written(where: str, block: str, tmp_path: Path) -> None:
    make_class_folder(tmp_path / "photos", per_class=8, size=96, suffix=".jpg")
    make_image(tmp_path / "new.jpg", (220, 30, 30), size=96, seed=7)
    (tmp_path / "examples").mkdir()
    shutil.copytree(ROOT / "examples" / "cifar10-sample", tmp_path / "examples" / "cifar10-sample")
    shim = tmp_path / "bin" / "imgclf"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m imgclf "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, **CLI_ENV, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for line in (line.split("  #")[0].strip() for line in block.splitlines()):
        if not line:
            continue
        done = run_shell(line, tmp_path, env)
        assert done.returncode == 0, f"{where}: `{line}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
