"""Command lines generated from the flows' own signatures: every option is declared once.

A flow's parameters (their types, defaults and the ``Field`` descriptions of the models they
take) are the single declaration: :func:`flow_parser` turns them into argparse options with
help texts, and :func:`flow_arguments` turns the parsed options back into the flow's keyword
arguments, validated, so a bad value fails in a second with one line (``error: dropout=1.5:
must be less than 1``) before Prefect or TensorFlow start. The Prefect UI's run form and the
server's parameter checks come from the same signature.

A parameter typed as a model (``SearchSpace``, ``StudyPlan``, ``TrialConfig``) is *expanded*:
one option per field (``--units 16 64``); an optional one (``study: StudyPlan | None``) also
gets a switch (``--study``).
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from tasks.errors import UserError, as_user_error

#: Help for the plain flow parameters, by name (shared by every flow that has one).
HELP: dict[str, str] = {
    "data": "Keras-format mnist.npz (default: $MNIST_PATH, else Keras' cache/download)",
    "train_samples": "use only the first N training images (quick runs)",
    "reports_dir": "where the run folder is written (default: ./reports or "
                   "$PIPELINE_REPORTS_DIR)",
    "data_dir": "processed data and trained weights (default: ./data or $PIPELINE_DATA_DIR)",
    "epochs": "epochs of every trial (default: each part's own: 10)",
    "backend": "compiled: whole epochs as one TensorFlow graph (fast); keras: the exercise's "
               "model.fit (reference)",
    "runner": "task runner: auto (one worker process per core for a large search, one thread "
              "for a small one), threads (in this process), processes (worker processes) or "
              "dask (prefect-dask)",
    "workers": "trials trained at once (default: one per core for processes and dask, 1 for "
               "threads)",
    "dask_address": "with --runner dask: an existing scheduler, tcp://HOST:PORT (default: a "
                    "local cluster of --workers processes)",
    "max_failures": "trials that may still fail after their retries while the run counts as "
                    "successful (0: any failed trial makes the run end Failed, exit status 1, "
                    "after its report is written)",
    "trials": "plain search: number of distinct random configs",
    "draw_seed": "seed of the random draw of configs (a larger --trials or pool extends the "
                 "smaller one)",
    "study": "run the best-of-N study instead of a plain search",
    "sampler": "tpe: Optuna's TPE (model-based, constant liar for the trials running at "
               "once); random: uniform draws, for comparison",
    "pruner": "stop hopeless trials after an epoch: median (below the median of earlier "
              "trials at that epoch) or hyperband; none: every trial trains all its epochs",
    "sampler_seed": "seed of the sampler (a resumed study continues from its own state)",
    "study_name": "the Optuna study: a tune with the same name resumes and extends it",
    "storage": "Optuna storage URL (default: $PIPELINE_OPTUNA_STORAGE, else "
               "sqlite:///<data dir>/optuna.db)",
}
#: Option names that differ from the parameter or field name.
OPTION_NAMES = {"n_values": "n", "seed": "train-seed", "sampler_seed": "seed"}
#: Parameters that are never options (set by the composing flow, not by a person).
HIDDEN = {"return_state"}
GROUPS = {"data": "data and output", "train_samples": "data and output",
          "reports_dir": "data and output", "data_dir": "data and output",
          "epochs": "training", "backend": "training", "runner": "fan-out",
          "workers": "fan-out", "dask_address": "fan-out", "max_failures": "fan-out"}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``Optional``/``Annotated``, whether None is allowed)."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation, optional
        else:
            return annotation, optional


def _argparse_kwargs(annotation: Any, default: Any, help_text: str,
                     metavar: str) -> dict[str, Any]:
    """argparse keywords for a value of type ``annotation``."""
    kind, _ = _unwrap(annotation)
    kwargs: dict[str, Any] = {}
    if typing.get_origin(kind) is list:
        (kind,) = typing.get_args(kind)
        kind, _ = _unwrap(kind)
        kwargs["nargs"] = "+"
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        default = "on" if default else "off"
    elif typing.get_origin(kind) is Literal:
        kwargs["choices"] = list(typing.get_args(kind))
    elif kind in (int, float, str):
        kwargs["type"] = kind
        kwargs["metavar"] = metavar
    elif inspect.isclass(kind) and issubclass(kind, BaseModel) and hasattr(kind, "parse"):
        kwargs["type"] = str  # a model written as one text (a Dimension: kind:arguments)
        kwargs["metavar"] = "SPEC"
    else:  # pragma: no cover (a parameter type the command line cannot take)
        raise TypeError(f"no command-line option for a parameter of type {annotation!r}")
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    if kind is float and isinstance(default, list):
        shown = " ".join(f"{v:g}" for v in default)
    kwargs["help"] = f"{help_text} (default: {shown})" if default is not None else help_text
    kwargs["default"] = argparse.SUPPRESS  # given options only: the flow keeps its defaults
    return kwargs


def _option(name: str) -> str:
    return "--" + OPTION_NAMES.get(name, name).replace("_", "-")


def _metavar(name: str) -> str:
    return {"data": "PATH", "reports_dir": "DIR", "data_dir": "DIR", "dask_address":
            "tcp://HOST:PORT"}.get(name, OPTION_NAMES.get(name, name).replace("-", "_").upper())


def _model_parameters(flow) -> dict[str, tuple[type[BaseModel], bool, Any]]:
    found = {}
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, parameter in inspect.signature(flow.fn).parameters.items():
        kind, optional = _unwrap(hints[name])
        if inspect.isclass(kind) and issubclass(kind, BaseModel):
            found[name] = (kind, optional, parameter.default)
    return found


def flow_parser(flow, description: str, expand: tuple[str, ...] = (),
                hide: tuple[str, ...] = (), help_texts: dict[str, str] | None = None,
                files: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser for ``flow``: one option per plain parameter, one per field of the
    model parameters named in ``expand``; ``hide`` leaves parameters off the command line;
    ``help_texts`` overrides :data:`HELP` for this flow; each name in ``files`` also gets
    ``--NAME-file PATH`` (the model's fields from a file; options given with it win)."""
    help_texts = HELP | (help_texts or {})
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    models = _model_parameters(flow)
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group(title: str):
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title]

    plain = set(inspect.signature(flow.fn).parameters) - set(models)
    for name in expand:
        model, optional, default = models[name]
        title = f"{name.replace('_', ' ')} ({model.__name__})"
        target = group(title)
        if optional:
            target.add_argument(_option(name), action="store_true", default=argparse.SUPPRESS,
                                help=help_texts[name])
        if name in files:
            target.add_argument(f"{_option(name)}-file", dest=f"{name}_file", metavar="PATH",
                                default=argparse.SUPPRESS,
                                help=f"a TOML or JSON file of the {name}'s fields (those "
                                     "below); options given beside it win")
        base = default if isinstance(default, BaseModel) else None
        for field_name, field in model.model_fields.items():
            if field_name in plain:  # the flow's own parameter of that name wins (epochs)
                continue
            value = getattr(base, field_name) if base is not None else field.get_default(
                call_default_factory=True)
            help_text = field.description or field_name.replace("_", " ")
            target.add_argument(_option(field_name), dest=f"{name}.{field_name}",
                                **_argparse_kwargs(hints_of(model)[field_name], value,
                                                   help_text, _metavar(field_name)))
    for name, parameter in inspect.signature(flow.fn).parameters.items():
        if name in models or name in HIDDEN or name in hide:
            continue
        kwargs = _argparse_kwargs(hints[name], parameter.default, help_texts[name],
                                  _metavar(name))
        group(GROUPS.get(name, "search")).add_argument(_option(name), dest=name, **kwargs)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Prefect's and TensorFlow's own logs")
    return parser


def hints_of(model: type[BaseModel]) -> dict[str, Any]:
    """Each field's type (pydantic keeps list element constraints as ``Annotated``)."""
    return {name: field.annotation for name, field in model.model_fields.items()}


def flow_arguments(flow, args: argparse.Namespace, expand: tuple[str, ...] = (),
                   make: dict[str, Callable[..., BaseModel]] | None = None,
                   base: dict[str, BaseModel] | None = None) -> dict[str, Any]:
    """The flow's keyword arguments from parsed options: plain parameters as given, expanded
    models rebuilt from their default (or ``base[name]``, e.g. read from a file) with the
    given fields (validated by ``make[name]`` or the model itself; a bad value becomes one
    UserError line)."""
    given = vars(args)
    models = _model_parameters(flow)
    kwargs: dict[str, Any] = {}
    for name in expand:
        model, optional, default = models[name]
        default = (base or {}).get(name, default)
        fields = {key.split(".", 1)[1]: value for key, value in given.items()
                  if key.startswith(f"{name}.")}
        if optional and not given.get(name) and default is None:
            if fields:  # e.g. --n without --study: say so instead of ignoring it
                first = _option(next(iter(fields)))
                raise UserError(f"{first} belongs to {_option(name)}: add {_option(name)}")
            continue  # --study not given: no study
        values = (default.model_dump() if isinstance(default, BaseModel) else {}) | fields
        build = (make or {}).get(name, model)
        try:
            kwargs[name] = build(**values)
        except ValidationError as exc:
            raise as_user_error(exc) from None
    for name in inspect.signature(flow.fn).parameters:
        if name in given and name not in models:
            kwargs[name] = given[name]
    return kwargs
