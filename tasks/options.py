"""Command lines generated from the flows' own signatures: every option is declared once.

A flow's parameters (their types, defaults, the ``Field`` descriptions of the models they
take, and ``Annotated[..., Field(description=...)]`` on the plain ones) are the single
declaration: :func:`flow_parser` turns them into argparse options with help texts, and
:func:`flow_arguments` turns the parsed options back into the flow's keyword arguments,
validated, so a bad value fails in a second with one line (``error: dropout=1.5: must be less
than 1``) before Prefect or TensorFlow start. The Prefect UI's run form and the server's
parameter checks come from the same signature. The options every flow shares are the fields
of :class:`tasks.run_options.RunOptions` and :class:`tasks.run_options.FanOut`.

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

from pydantic import BaseModel, ValidationError, create_model
from pydantic.fields import FieldInfo

from tasks.errors import UserError, as_user_error

#: Option names that differ from the parameter or field name.
OPTION_NAMES = {"n_values": "n", "seed": "train-seed", "sampler_seed": "seed"}


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
        # a model written as one text (a Dimension: kind:arguments), or as values to choose
        # from (``--units 128 256 512``)
        kwargs["type"] = str
        kwargs["nargs"] = "+"
        kwargs["action"] = _OneOrMore
        kwargs["metavar"] = "SPEC"
    else:  # pragma: no cover (a parameter type the command line cannot take)
        raise TypeError(f"no command-line option for a parameter of type {annotation!r}")
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    if kind is float and isinstance(default, list):
        shown = " ".join(f"{v:g}" for v in default)
    kwargs["help"] = f"{help_text} (default: {shown})" if default is not None else help_text
    kwargs["default"] = argparse.SUPPRESS  # given options only: the flow keeps its defaults
    return kwargs


class _OneOrMore(argparse.Action):
    """Keeps one value as itself (a dimension's text: ``int_log:8:512``) and several as a
    list (the values to choose from: ``128 256 512``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else values)


def _option(name: str) -> str:
    return "--" + OPTION_NAMES.get(name, name).replace("_", "-")


def _metavar(name: str, extra: dict | None = None) -> str:
    return (extra or {}).get("metavar") or OPTION_NAMES.get(name, name).replace("-", "_").upper()


def _described(annotation: Any) -> tuple[str | None, dict]:
    """(description, json_schema_extra) of a parameter annotated ``Annotated[T, Field(...)]``."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, FieldInfo) and meta.description:
            extra = meta.json_schema_extra if isinstance(meta.json_schema_extra, dict) else {}
            return meta.description, extra
    return None, {}


def _model_parameters(flow) -> dict[str, tuple[type[BaseModel], bool, Any]]:
    found = {}
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, parameter in inspect.signature(flow.fn).parameters.items():
        kind, optional = _unwrap(hints[name])
        if inspect.isclass(kind) and issubclass(kind, BaseModel):
            found[name] = (kind, optional, parameter.default)
    return found


def flow_parser(flow, description: str, expand: tuple[str, ...] = (),
                files: tuple[str, ...] = (),
                prefixes: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """An argparse parser for ``flow``: one option per plain parameter (its help: the
    description of its ``Annotated[..., Field(description=...)]``), one per field of the model
    parameters named in ``expand`` (grouped by their ``json_schema_extra`` group, else by
    model); each name in ``files`` also gets ``--NAME-file PATH`` (the model's fields from a
    file; options given with it win). ``prefixes``: expanded models whose options carry a
    prefix, for a flow that takes two models with the same fields (the exercise's grid and
    random space: ``--grid-units``, ``--random-units``)."""
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
        if optional:
            help_text, _ = _described(hints[name])
            group(title).add_argument(_option(name), action="store_true",
                                      default=argparse.SUPPRESS, help=help_text)
        if name in files:
            group(title).add_argument(
                f"{_option(name)}-file", dest=f"{name}_file", metavar="PATH",
                default=argparse.SUPPRESS, help=f"a TOML or JSON file of the {name}'s fields "
                                                "(those below); options given beside it win")
        base = default if isinstance(default, BaseModel) else None
        for field_name, field in model.model_fields.items():
            if field_name in plain:  # the flow's own parameter of that name wins (epochs)
                continue
            value = getattr(base, field_name) if base is not None else field.get_default(
                call_default_factory=True)
            help_text = field.description or field_name.replace("_", " ")
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            option = _option(field_name)
            if name in (prefixes or {}):
                option = f"--{prefixes[name]}-{option[2:]}"
            group(extra.get("group", title)).add_argument(
                option, dest=f"{name}.{field_name}",
                **_argparse_kwargs(hints_of(model)[field_name], value, help_text,
                                   _metavar(field_name, extra)))
    for name, parameter in inspect.signature(flow.fn).parameters.items():
        if name in models:
            continue
        help_text, extra = _described(hints[name])
        if help_text is None:
            raise TypeError(f"flow parameter {name!r} needs Annotated[..., Field(description="
                            "...)]: its help on the command line and in the UI")
        kwargs = _argparse_kwargs(hints[name], parameter.default, help_text,
                                  _metavar(name, extra))
        group(extra.get("group", "search")).add_argument(_option(name), dest=name, **kwargs)
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
    plain = {name: given[name] for name in inspect.signature(flow.fn).parameters
             if name in given and name not in models}
    check_plain_parameters(flow, plain)
    return kwargs | plain


def check_plain_parameters(flow, values: dict[str, Any]) -> None:
    """Validate the flow's plain parameters against their annotations (bounds included), as
    the Prefect server would, with one UserError line: ``epochs=0: must be greater than or
    equal to 1``."""
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    fields = {name: (hints[name], ...) for name in values}
    try:
        create_model(f"{flow.name}-parameters", **fields).model_validate(values)
    except ValidationError as exc:
        raise as_user_error(exc) from None
