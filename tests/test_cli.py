"""The CLI run as a user runs it: its entry point (in-process, or a subprocess where the process is what is
tested), real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_class_folder, make_image, run_cli, run_process
from processes import run_python
from test_cifar import fake_archive


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Class folders with the problems inspect must find."""
    root = make_class_folder(tmp_path / "data", per_class=20)
    (root / "red" / "empty.png").write_bytes(b"")
    (root / "red" / "notes.png").write_text("not an image")
    (root / "red" / "README.txt").write_text("ignored")
    shutil.copy(root / "green" / "000.png", root / "green" / "copy-of-000.png")
    for number in range(3):  # a tiny class: imbalance
        make_image(root / "grey" / f"{number}.png", (128, 128, 128), seed=number)
    return root


@pytest.mark.subprocess
def test_help_lists_commands_and_each_has_an_example() -> None:
    import typer
    from typer.testing import CliRunner

    from imgclf.cli import app

    result = run_process("--help")  # a real process once; each command's help in-process (a subprocess each: 30 s)
    assert result.returncode == 0
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"inspect", "train", "evaluate", "predict", "embed", "similar", "index", "match",
            "export", "serve"} <= set(commands)
    runner = CliRunner()
    for name, command in commands.items():
        assert name in result.stdout
        invocations = [[name, sub] for sub in getattr(command, "commands", {})] or [[name]]
        for words in invocations:
            shown = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
            assert shown.exit_code == 0, words
            assert re.search(rf"Examples?: imgclf {' '.join(words)}\b", shown.output), words


def test_version() -> None:
    assert run_cli("--version").stdout.startswith("imgclf ")


def test_inspect_reports_counts_broken_duplicates_and_imbalance(messy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("inspect", str(messy_folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stderr
    assert "4 classes" in text and "total" in text
    assert "2 file(s) cannot be decoded" in text
    assert "class imbalance: 'grey'" in text
    assert "exact duplicates" in text or "leakage" in text
    broken = (out / "broken_files.txt").read_text()
    assert "empty.png\tempty file" in broken and "notes.png\tnot an image" in broken
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert sum(report["splits"].values()) == 20 * 3 + 1 + 3  # good images only
    assert report["ignored_files"] == 1


def test_inspect_json_on_stdout(class_folder: Path, tmp_path: Path) -> None:
    result = run_cli("inspect", str(class_folder), "--json", "--out", str(tmp_path / "o"))
    report = json.loads(result.stdout)
    assert report["classes"] == ["blue", "green", "red"]
    assert report["splits"] == {"unsplit": 30}, "inspect reports the data as given, without carving splits"
    assert report["counts"]["red"] == {"unsplit": 10}


def test_inspect_finds_leakage_across_given_splits(tmp_path: Path) -> None:
    make_class_folder(tmp_path / "d" / "train", per_class=4)
    make_class_folder(tmp_path / "d" / "test", per_class=1, seed=1)
    shutil.copy(tmp_path / "d" / "train" / "red" / "003.png", tmp_path / "d" / "test" / "red" / "leak.png")
    report = json.loads(run_cli("inspect", str(tmp_path / "d"), "--json", "--out", str(tmp_path / "o")).stdout)
    assert [group["kind"] for group in report["duplicates"]] == ["leakage"]
    assert any("leakage" in warning for warning in report["warnings"])


def test_inspect_uses_split_folders_beside_a_docs_folder(tmp_path: Path) -> None:
    make_class_folder(tmp_path / "data" / "train", per_class=3)
    make_class_folder(tmp_path / "data" / "test", per_class=1)
    make_image(tmp_path / "data" / "iconic_images" / "red.png", (220, 30, 30))
    result = run_cli("inspect", str(tmp_path / "data"), "--json", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["splits"] == {"train": 9, "test": 3}
    assert "ignored 1 other folder(s): iconic_images" in result.stderr


def test_inspect_names_images_under_different_labels(tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=4)
    for number in range(4):  # four files copied into another class: a labelling mistake to find
        shutil.copy(data / "red" / f"{number:03d}.png", data / "green" / f"from-red-{number}.png")
    result = run_cli("inspect", str(data), "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if "different labels" in line)
    assert line.startswith("warning: 4 image(s) appear under different labels; e.g. green/from-red-0.png (green) = "
                           "red/000.png (red); green/from-red-1.png (green) = red/001.png (red); ")
    assert line.endswith("(all 4 in report.json, duplicates)")


def test_inspect_csv_manifest(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "a.png", (200, 0, 0))
    make_image(tmp_path / "imgs" / "b.png", (0, 200, 0))
    (tmp_path / "list.csv").write_text("path,labels\nimgs/a.png,red|warm\nimgs/b.png,green\n")
    report = json.loads(run_cli("inspect", str(tmp_path / "list.csv"), "--json", "--out", str(tmp_path / "o")).stdout)
    assert report["multilabel"] and report["classes"] == ["green", "red", "warm"]


def test_inspect_cifar_from_local_archive(tmp_path: Path) -> None:
    archive, _ = fake_archive(tmp_path, "cifar10")
    result = run_cli("inspect", "cifar10", "--from", str(archive), "--json", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["classes"] == ["airplane", "automobile", "bird"]
    assert report["splits"] == {"train": 15, "test": 3}


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", "no/such/folder"], "no/such/folder does not exist"),
    (["inspect", "{data}", "--from", "x.tar.gz"], "--from is only for cifar10 / cifar100"),
    (["inspect", "{data}/red/000.png"], "is a file but not a .csv manifest"),
    (["preview-augment", "{data}", "--augment", "wild"], "--augment 'wild' is not a preset"),
    (["preview-augment", "{data}", "--index", "999"], "--index 999 is out of range"),
])
def test_bad_input_is_one_line_without_traceback(class_folder: Path, args: list[str], message: str) -> None:
    result = run_cli(*[arg.replace("{data}", str(class_folder)) for arg in args])
    assert_one_line_error(result, message)


@pytest.mark.subprocess
def test_bad_input_in_a_real_process_is_one_line_without_traceback(class_folder: Path) -> None:
    assert_one_line_error(run_process("preview-augment", str(class_folder), "--augment", "wild"),
                          "--augment 'wild' is not a preset")


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# The console script (`imgclf`, installed by pip) calls the entry point exactly like this.
CONSOLE_SCRIPT = ("import sys; from importlib.metadata import entry_points; "
                  "(script,) = entry_points(group='console_scripts', name='imgclf'); sys.argv[0] = 'imgclf'; "
                  "sys.exit(script.load()())")


USAGE_MISTAKES = [
    (["train", "--bogus"], "No such option: --bogus"),
    (["train", "x", "--epoch", "3"], "No such option: --epoch (Possible options: --epochs"),
    (["predict"], "Missing argument 'model'"),
    (["bogus"], "No such command 'bogus'"),
    (["trian"], "Did you mean 'train'?"),
]


# Each mistake in-process (the entry function the console script calls); two, an option and a command, through the
# installed console script in a real process: what reaches the terminal and the exit status are the process's.
@pytest.mark.parametrize(("runner", "args", "message"), [
    *[("in-process", args, message) for args, message in USAGE_MISTAKES],
    *[pytest.param("console script", args, message, marks=pytest.mark.subprocess)
      for args, message in (USAGE_MISTAKES[1], USAGE_MISTAKES[4])],
])
def test_usage_mistakes_show_usage_not_a_traceback(runner: str, args: list[str], message: str) -> None:
    if runner == "console script":
        result = run_python("-c", CONSOLE_SCRIPT, *args, timeout=120)
    else:
        result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Usage: imgclf" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_no_arguments_shows_help_without_a_traceback() -> None:
    result = run_cli()
    output = result.stdout + result.stderr
    assert "Commands" in output and "train" in output
    assert "Traceback" not in output


def test_preview_augment_writes_a_png(class_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug.png"
    result = run_cli("preview-augment", str(class_folder), "--augment", "strong", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_compare_takes_the_split_seed_as_train_does() -> None:
    """Runs that differ only by --seed share a split; compare, like train and tune, says which split it trains on."""
    result = run_cli("compare", "--help")
    assert result.returncode == 0 and "--split-seed" in result.stdout
