"""Options shared by several commands, declared once: by hand here, or generated from ``TrainConfig``'s fields.

A training option's flag, type, help, choices and panel come from its
``TrainConfig`` field (:func:`with_config_options`), so ``train``, ``tune``,
``compare``, ``inspect`` and ``preview-augment`` cannot drift apart. The
few options that are not training options but several commands take
(``--from``, ``--device``/``--nproc``, the model and image arguments) are
the ``Annotated`` aliases below.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import Field, fields
from inspect import Parameter, Signature, signature
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from imgclf.config import PANELS, TrainConfig
from imgclf.errors import ImgclfError

Opt = typer.Option  # brevity in the option lists of the command modules


def config_field(name: str, config_class: type[TrainConfig] = TrainConfig) -> Field[Any]:
    """The ``TrainConfig`` field that declares option ``name``."""
    return next(item for item in fields(config_class) if item.name == name)


def config_help(name: str) -> str:
    """The declared help of a field whose flag (or argument) a command writes itself."""
    return str(config_field(name).metadata["help"])


# The dataset argument and --from of every command that reads a dataset: one name, one meaning.
Source = Annotated[str, typer.Argument(help=config_help("data"), show_default=False)]
ArchiveOption = Annotated[Optional[Path], Opt("--from", help="Local copy of the CIFAR archive (no download).")]

# Corrections on top of the data (imgclf.data.corrections): train and tune get --corrections from TrainConfig; the
# commands that are not training (inspect, evaluate, update) declare these; --rename everywhere (a list: no field flag).
CorrectionsOption = Annotated[Optional[Path], Opt(help=config_help("corrections"), show_default=False)]
RenameOption = Annotated[Optional[list[str]], Opt("--rename", help=config_help("rename"), rich_help_panel="Data",
                                                  show_default=False)]

# A trained model, and how it runs: evaluate, predict, explain, export, serve, calibrate.
Model = Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model bundle folder.", show_default=False)]
TtaOption = Annotated[Optional[bool], Opt("--tta/--no-tta", help="Flip averaging (default: as the model trained).",
                                          show_default=False)]
RuntimeOption = Annotated[str, Opt(help="torch (keras for a TensorFlow model), onnx, onnx-int8, openvino, openvino-int8 "
                                        "(files imgclf export wrote into the bundle), or auto: the fastest measured on "
                                        "this machine (at export, else once on first use, then remembered), "
                                        "int8 exports included except for evaluate, which measures the model itself.")]
ModelArgsOption = Annotated[Optional[list[str]], Opt("--model-arg", help=config_help("model_args"),
                                                     rich_help_panel="Model")]

# The embedding commands' model, weights and images; --json wherever a command can print JSON instead of tables.
ModelArgument = Annotated[str, typer.Argument(
    help="A backbone with pretrained weights (imgclf models --pretrained), or a trained model (runs/NAME).",
    show_default=False)]
WeightsOption = Annotated[Optional[Path], Opt(help="Weights file for the backbone (.safetensors or .pth).")]
JsonOption = Annotated[bool, Opt("--json", help="Print JSON on stdout instead of tables.")]
Images = Annotated[list[str], typer.Argument(help="Files, folders, globs, @list.txt, - for stdin, or a CSV with an "
                                                  "image column.", show_default=False)]

# The options of the commands that split their inputs among processes (embed, predict).
DeviceOption = Annotated[str, Opt(help="auto (a GPU when there is one), cpu or cuda; with --nproc each "
                                       "process gets its own GPU.")]
NprocOption = Annotated[Optional[int], Opt(help="Split the inputs among N processes on this machine "
                                                "(torchrun); the output is the same, resumable in parts.",
                                           show_default=False)]

_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def _config_parameter(item: Field[Any], default: Any, panel: bool, note: str = "") -> Parameter | None:
    """One ``--flag`` from a config field's type, help, choices and panel (``note``: what this command adds, such as
    its own default); None for a field no flag can hold."""
    kind = _KINDS.get(str(item.type).split("|")[0].strip())
    if kind is None:  # a dict (model_args) needs the command's own KEY=VALUE flag
        return None
    choices = item.metadata["choices"]
    text = " ".join(part for part in (item.metadata["help"], note, f"One of: {', '.join(choices)}." if choices else "")
                    if part)
    option = Opt(help=escape(text), rich_help_panel=item.metadata["panel"] if panel else None,
                 show_default=default is not None)
    return Parameter(item.name, Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[Optional[kind], option])


def config_options(config_class: type[TrainConfig] = TrainConfig, skip: tuple[str, ...] = ()) -> list[Parameter]:
    """One ``--flag`` per config field, grouped in the field's panel.

    Every flag defaults to None ("not given"), so a YAML ``--config`` or the
    config's own default applies; bool fields get ``--x/--no-x``.
    """
    ordered = sorted(fields(config_class), key=lambda item: PANELS.index(item.metadata["panel"]))
    made = (_config_parameter(item, None, panel=True) for item in ordered if item.name not in skip)
    return [parameter for parameter in made if parameter is not None]


def with_parameters(command: Callable[..., None], extra: Iterable[Parameter]) -> Callable[..., None]:
    """``command``'s own parameters, then ``extra`` for its ``**options``: what Typer builds the command from."""
    own = [parameter for parameter in signature(command, eval_str=True).parameters.values()
           if parameter.kind is not Parameter.VAR_KEYWORD]
    command.__signature__ = Signature([*own, *extra])  # type: ignore[attr-defined]  # typer reads a function's __signature__
    return command


def with_config_options(command: Callable[..., None], config_class: type[TrainConfig] = TrainConfig
                        ) -> Callable[..., None]:
    """``command`` taking every config field as a flag in its ``**options``. The options the command declares
    itself (such as DATA) are not generated twice."""
    own = tuple(signature(command, eval_str=True).parameters)
    return with_parameters(command, config_options(config_class, skip=own))


def config_flags(notes: dict[str, str] | None = None, **defaults: Any
                 ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving a command the named config fields as flags in its ``**options``, with the command's own
    defaults (None: "not given") and ``notes`` added to their help; for commands that take a few training
    options, without the panels."""
    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        made = (_config_parameter(config_field(name), default, panel=False, note=(notes or {}).get(name, ""))
                for name, default in defaults.items())
        return with_parameters(command, [parameter for parameter in made if parameter is not None])
    return decorate


def parse_model_args(pairs: list[str]) -> dict[str, object]:
    """``--model-arg KEY=VALUE`` pairs as a dict, each value read as YAML (numbers, true/false, lists)."""
    import yaml

    parsed: dict[str, object] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ImgclfError(f"--model-arg '{pair}' should be KEY=VALUE, e.g. --model-arg dropout=0.2")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ImgclfError(f"--model-arg '{pair}': cannot read the value; write numbers, true/false or [a, b]") from None
    return parsed


def start_processes(nproc: int | None, device: str, check: Callable[[], None]) -> None:
    """With ``--nproc N``: refuse what N processes cannot do (``check``, the device), then run this command line
    under torchrun and exit with its code. Without: return, and the command runs here."""
    if nproc is None:
        return
    from imgclf import distributed

    check()
    distributed.check_nproc_device(nproc, device)
    raise typer.Exit(distributed.launch(nproc, sys.argv[1:]))


def option_group(**declared: tuple[Any, Any]) -> list[Parameter]:
    """Options that travel together into one call (``name=(Annotated type, default)``), declared once as a group
    that :func:`with_options` adds to a command's ``**options``: the command passes them on as one dict."""
    return [Parameter(name, Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, (annotation, default) in declared.items()]


def with_options(*groups: list[Parameter]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator adding :func:`option_group` groups to a command's ``**options``."""
    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        return with_parameters(command, [parameter for group in groups for parameter in group])
    return decorate


# --log: serve and predict record every prediction (imgclf.watch); the group goes to the log as one LogOptions
LOG_PANEL = "Prediction log"
LOG_OPTIONS = option_group(
    log=(Annotated[Optional[str], Opt(help="Record every prediction in this database: a file path (SQLite) or a "
                                           "postgresql://user@host/db URL.", rich_help_panel=LOG_PANEL,
                                      show_default=False)], None),
    log_images=(Annotated[Optional[Path], Opt(help="Also keep a copy of each image here, once per content.",
                                              rich_help_panel=LOG_PANEL, show_default=False)], None),
    log_images_max_mb=(Annotated[float, Opt(help="Most MiB of image copies; the oldest go first.",
                                            rich_help_panel=LOG_PANEL)], 1024.0),
    log_keep=(Annotated[Optional[str], Opt(help="Delete rows older than this, e.g. 30d, 12h (reviewed rows stay).",
                                           rich_help_panel=LOG_PANEL, show_default=False)], None),
    log_max_rows=(Annotated[Optional[int], Opt(help="Keep at most this many rows, the newest.",
                                               rich_help_panel=LOG_PANEL, show_default=False)], None),
    review_below=(Annotated[Optional[float], Opt(help="Queue for review the answers less sure than this (default: "
                                                      "the model's decision threshold, else 0.5).",
                                                 rich_help_panel=LOG_PANEL, show_default=False)], None),
    audit_rate=(Annotated[float, Opt(help="Also queue this share of all answers, drawn at random, to measure "
                                          "accuracy.", rich_help_panel=LOG_PANEL)], 0.0),
)


def log_options(options: dict[str, Any]) -> Any:
    """The ``LogOptions`` of a command's :data:`LOG_OPTIONS` values; None without ``--log`` (its companions then
    are refused, not ignored)."""
    from imgclf.watch.log import LogOptions

    if options["log"] is None:
        given = [name for name in ("log_images", "log_keep", "log_max_rows", "review_below") if options[name] is not None]
        if given or options["audit_rate"]:
            name = given[0] if given else "audit_rate"
            raise ImgclfError(f"--{name.replace('_', '-')} works with --log; add --log predictions.db")
        return None
    return LogOptions(options["log"], images=options["log_images"], images_max_mb=options["log_images_max_mb"],
                      keep=options["log_keep"], max_rows=options["log_max_rows"],
                      review_below=options["review_below"], audit_rate=options["audit_rate"])
