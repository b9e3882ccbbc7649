"""Model folders: ``promote``, ``rollback``, ``versions`` (and ``models FOLDER``), the gate check, one-line errors, and
a promotion killed at any step leaving the old pointer or the new one, never neither."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, untrained_bundle
from processes import start_python

import imgclf
from imgclf.deploy.metadata import bundle_content_id
from imgclf.errors import ImgclfError
from imgclf.lifecycle.lineage import LINEAGE_FILE
from imgclf.lifecycle.model_folder import POINTER, VERSIONS, ModelFolder


def version_bundle(root: Path, tag: int, lineage: dict | None = None) -> Path:
    """An untrained tiny bundle made a version of its own (its model.json differs), with ``lineage`` if given."""
    bundle = untrained_bundle(root / f"bundle-{tag}")
    values = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    values["metrics"] = {"val_accuracy": tag / 100}
    (bundle / "model.json").write_text(json.dumps(values), encoding="utf-8")
    if lineage is not None:
        (bundle / LINEAGE_FILE).write_text(json.dumps(lineage), encoding="utf-8")
    return bundle


def said(answer: subprocess.CompletedProcess[str]) -> str:
    """What a command printed: results and errors go to stderr (the console), --json to stdout."""
    return answer.stdout + answer.stderr


def current(folder: Path) -> str:
    return json.loads((folder / POINTER).read_text(encoding="utf-8"))["current"]


GATE_PASSED = {"id": "x", "parent": {"id": "0123456789ab", "path": "runs/shop"},
               "added": {"images": 20, "classes": {"yellow": 20}, "manifest": "added_data.csv", "sha256": "ab" * 32},
               "gate": {"passed": True, "forced": False, "max_drop": 2.0, "classes": []}}


def test_promote_rollback_and_versions_with_lineage(tmp_path: Path) -> None:
    first, second = version_bundle(tmp_path, 1), version_bundle(tmp_path, 2, GATE_PASSED)
    folder = tmp_path / "models" / "shop"
    one = imgclf.promote(first.parent, folder)  # a run directory (its model/) or the bundle itself
    assert one.previous is None and current(folder) == one.version
    promoted = run_cli("promote", str(second), "--to", str(folder))
    two = current(folder)
    assert promoted.returncode == 0 and f"promoted {two}" in said(promoted) and f"was {one.version}" in said(promoted)
    assert (folder / VERSIONS / two / LINEAGE_FILE).is_file() and two != one.version
    listed = json.loads(run_cli("versions", str(folder), "--json").stdout)
    assert [(row["version"], row["current"]) for row in listed] == [(two, True), (one.version, False)]
    assert listed[0]["lineage"]["parent"]["id"] == "0123456789ab" and listed[1]["lineage"] is None
    table = said(run_cli("models", str(folder)))  # what a user guesses first lists the same
    assert two in table and "0123456789ab" in table and "20 images: yellow (20)" in table and "passed" in table
    again = run_cli("promote", str(second), "--to", str(folder))
    assert "already current" in said(again) and len(ModelFolder.open(folder).versions()) == 2
    back = run_cli("rollback", str(folder))
    assert back.returncode == 0 and f"rolled back to {one.version}" in said(back) and current(folder) == one.version
    assert imgclf.rollback(folder, to=two[:5]).version == two  # to a version by a prefix of its id
    assert imgclf.rollback(folder).version == one.version


def test_a_failed_gate_is_refused_in_one_line_unless_forced(tmp_path: Path) -> None:
    gate = {"passed": False, "forced": False, "max_drop": 2.0, "classes": ["roses", "tulips"]}
    failed = version_bundle(tmp_path, 1, {**GATE_PASSED, "gate": gate})
    folder = tmp_path / "models" / "shop"
    refused = run_cli("promote", str(failed), "--to", str(folder))
    assert refused.returncode == 2 and len(said(refused).strip().splitlines()) == 1, said(refused)
    assert "failed its regression gate" in said(refused) and "roses, tulips" in said(refused)
    assert "--force" in said(refused) and not (folder / POINTER).exists()
    forced = version_bundle(tmp_path, 2, {**GATE_PASSED, "gate": {**gate, "forced": True}})
    assert run_cli("promote", str(forced), "--to", str(folder)).returncode == 0
    assert "forced" in said(run_cli("versions", str(folder)))


def test_one_line_errors(tmp_path: Path) -> None:
    bundle = version_bundle(tmp_path, 1)
    folder = tmp_path / "models" / "shop"
    cases = {
        ("versions", str(bundle)): "is not a model folder",
        ("rollback", str(tmp_path / "nowhere")): "no such model folder",
        ("promote", str(bundle), "--to", str(bundle.parent)): "is not a model folder (no current.json) and is not empty",
        ("promote", str(tmp_path / "missing"), "--to", str(folder)): "no such model",
    }
    for args, expected in cases.items():
        answer = run_cli(*args)
        assert answer.returncode == 2 and expected in said(answer) and len(said(answer).strip().splitlines()) == 1, (
            args, said(answer))
    run_cli("promote", str(bundle), "--to", str(folder))
    lonely = run_cli("rollback", str(folder))
    assert lonely.returncode == 2 and "no previous version to roll back to" in said(lonely)
    missing = run_cli("rollback", str(folder), "--to", "ffff")
    assert missing.returncode == 2 and "version 'ffff' does not exist" in said(missing) and current(folder) in said(missing)
    (folder / POINTER).write_text("{not json", encoding="utf-8")
    broken = run_cli("versions", str(folder))
    assert broken.returncode == 2 and "cannot be read as a model folder's pointer" in said(broken)


class Killed(BaseException):
    """Stands for the process dying at this step (not an Exception: nothing on the way may handle it)."""


def test_a_promotion_stopped_at_any_step_leaves_the_old_or_the_new_pointer(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = version_bundle(tmp_path, 1), version_bundle(tmp_path, 2)
    template = tmp_path / "template"
    before, after = imgclf.promote(old, template).version, bundle_content_id(new)
    steps = {"replace": (os, "replace"), "fsync": (os, "fsync"), "copyfile": (shutil, "copyfile"),
             "mkdir": (os, "mkdir")}
    outcomes, step = set(), 0
    while True:
        step += 1
        folder = Path(shutil.copytree(template, tmp_path / f"try-{step}"))
        calls = [0]
        with monkeypatch.context() as patch:
            for module, name in steps.values():
                patch.setattr(module, name, _failing_at(getattr(module, name), calls, step))
            try:
                imgclf.promote(new, folder)
                finished = True
            except Killed:
                finished = False
        pointer = current(folder)
        assert pointer in (before, after) and set(ModelFolder.open(folder).versions()) <= {before, after}, step
        assert bundle_content_id(folder / VERSIONS / pointer) == pointer  # the version it names is whole
        outcomes.add(pointer == before)
        assert imgclf.promote(new, folder).version == current(folder) != before  # the next promotion completes
        if finished:
            break
    assert outcomes == {True, False} and step > 4  # stopped early it kept the old pointer, late the new one


def _failing_at(function: object, calls: list[int], step: int) -> object:
    def wrapped(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == step:
            raise Killed
        return function(*args, **kwargs)  # type: ignore[operator]

    return wrapped


@pytest.mark.subprocess
def test_kill_9_during_promote_leaves_a_whole_pointer(tmp_path: Path) -> None:
    """SIGKILL at chosen moments of a real ``imgclf promote`` (a bundle with a large file, so the copy takes a while):
    the pointer is the old or the new one, the folder lists only whole versions, and promoting again works."""
    old, new = version_bundle(tmp_path, 1), version_bundle(tmp_path, 2)
    (new / "extra.bin").write_bytes(np.random.default_rng(0).bytes(64 << 20))
    template = tmp_path / "template"
    before = imgclf.promote(old, template).version
    delays = np.random.default_rng(7).uniform(0.0, 0.3, 4)
    for attempt, delay in enumerate(delays):
        folder = Path(shutil.copytree(template, tmp_path / f"try-{attempt}"))
        process = start_python("-m", "imgclf", "promote", str(new), "--to", str(folder))
        while process.poll() is None and not any(".tmp-" in name for name in os.listdir(folder / VERSIONS)):
            time.sleep(0.01)  # the copy has begun (or the process ended)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        model_folder = ModelFolder.open(folder)
        assert current(folder) in model_folder.versions()
        assert current(folder) == before or (folder / VERSIONS / current(folder) / "extra.bin").stat().st_size == 64 << 20
        assert imgclf.promote(new, folder).version == current(folder) != before
        assert not [name for name in os.listdir(folder / VERSIONS) if name.startswith(".")]  # the partial copy is gone


def test_an_unreadable_lineage_is_refused(tmp_path: Path) -> None:
    bundle = version_bundle(tmp_path, 1)
    (bundle / LINEAGE_FILE).write_text("[1, 2", encoding="utf-8")
    with pytest.raises(ImgclfError, match="lineage.json cannot be read, so its regression gate cannot be checked"):
        imgclf.promote(bundle, tmp_path / "models" / "shop")
