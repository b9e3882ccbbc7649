"""Each training option is declared once, as a ``TrainConfig`` field; the train command and validation follow."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, Optional

import pytest
import typer
from conftest import run_cli
from typer.testing import CliRunner

from imgclf.cli.options import with_config_options
from imgclf.config import TrainConfig, option, validate
from imgclf.errors import ImgclfError


@dataclass
class WithColourSpace(TrainConfig):
    """The config with one option added: the one edit adding an option takes."""

    colour_space: str = option("rgb", "Colour space the model sees.", "Data", choices=("rgb", "lab"))


def _command(config_class: type[TrainConfig]) -> tuple[typer.Typer, dict[str, Any]]:
    """A one-command app derived from ``config_class`` the way ``imgclf train`` is, and what it was called with."""
    received: dict[str, Any] = {}

    def train(data: Annotated[Optional[str], typer.Argument()] = None, **options: Any) -> None:
        received.update(options, data=data)

    app = typer.Typer(rich_markup_mode="rich")
    app.command()(with_config_options(train, config_class))
    return app, received


def test_an_added_field_becomes_a_flag_with_its_help_choices_and_panel() -> None:
    app, _ = _command(WithColourSpace)
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--colour-space" in line)
    assert "Colour space the model sees. One of: rgb, lab." in line
    data_panel = result.output[result.output.index("─ Data ─"):]
    assert "--colour-space" in data_panel[:data_panel.index("╰")]


def test_an_added_field_reaches_the_command_and_is_validated() -> None:
    app, received = _command(WithColourSpace)
    result = CliRunner().invoke(app, ["photos", "--colour-space", "lab", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert received["colour_space"] == "lab" and received["epochs"] == 3.0 and received["data"] == "photos"
    assert received["lr"] is None  # not given: the YAML or the config default applies
    with pytest.raises(ImgclfError, match="--colour-space 'xyz' is not one of rgb, lab"):
        validate(WithColourSpace(colour_space="xyz"))


def test_imgclf_train_offers_every_config_field_as_a_flag() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0, result.stderr
    flags = {"data": "[data]", "model_args": "--model-arg"}  # the positional DATA and the repeatable KEY=VALUE
    for item in fields(TrainConfig):
        expected = flags.get(item.name, "--" + item.name.replace("_", "-"))
        assert expected in result.stdout, item.name
