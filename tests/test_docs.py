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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


WHERE = [where for where, _ in _marked_blocks()]


def test_some_guide_blocks_are_marked() -> None:
    assert len(_marked_blocks()) >= 2


def _block_folder(folder: Path) -> dict[str, str]:
    """Fill ``folder`` with what marked blocks name; the environment that puts ``imgclf`` on the PATH."""
    make_class_folder(folder / "photos", per_class=8, size=96, suffix=".jpg")
    make_image(folder / "new.jpg", (220, 30, 30), size=96, seed=7)
    (folder / "examples").mkdir()
    shutil.copytree(ROOT / "examples" / "cifar10-sample", folder / "examples" / "cifar10-sample")
    shim = folder / "bin" / "imgclf"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m imgclf "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, **CLI_ENV, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run_block(block: str, folder: Path, env: dict[str, str]) -> str | None:
    """Each line of ``block`` in turn as a user types it; the first one that fails, with its output, or None."""
    for line in (line.split("  #")[0].strip() for line in block.splitlines()):
        if not line:
            continue
        done = run_shell(line, folder, env)
        if done.returncode != 0:
            return f"`{line}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return None


@pytest.fixture(scope="module")
def block_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, Future[str | None]]]:
    """Every selected marked block starts at once, each in a folder of its own, its lines in order on a thread.

    The getting-started blocks train to one-minute budgets: wall-clock time a block spends on its own
    budget whatever else runs, so side by side the blocks take about as long as the longest, not their sum.
    """
    here = Path(__file__).resolve()
    selected = {item.callspec.id for item in request.session.items
                if item.path == here and getattr(item, "originalname", "") == "test_marked_guide_commands_run_as_written"}
    blocks = [(where, block) for where, block in _marked_blocks() if where in selected]
    with ThreadPoolExecutor(max_workers=max(1, len(blocks))) as pool:
        futures = {}
        for number, (where, block) in enumerate(blocks):
            folder = tmp_path_factory.mktemp(f"block{number}")
            futures[where] = pool.submit(_run_block, block, folder, _block_folder(folder))
        yield futures


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("where", WHERE, ids=WHERE)
def test_marked_guide_commands_run_as_written(where: str, block_runs: dict[str, Future[str | None]]) -> None:
    failed = block_runs[where].result()
    assert failed is None, f"{where}: {failed}"
