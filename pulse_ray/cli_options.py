"""Command-line flags generated from the options dataclasses.

A field of :class:`~pulse_ray.search.options.SearchOptions` or
:class:`~pulse_ray.job.options.JobOptions` becomes ``--field-name`` with the field's type,
default and ``metadata["help"]`` (``metadata["metavar"]`` too); a ``metadata["old_flag"]``
becomes a hidden flag that still works and prints a deprecation note. So each option is
declared once, in its dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing

import typer
from typing_extensions import Annotated

__all__ = ["with_options"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parameters(cls, fields) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls)
    params = []
    for f in fields:
        hint = hints[f.name]
        is_bool = hint is bool
        decl = f"{_flag(f.name)}/--no-{f.name.replace('_', '-')}" if is_bool else _flag(f.name)
        extra = {"metavar": f.metadata["metavar"]} if f.metadata.get("metavar") else {}
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=Annotated[hint, typer.Option(decl, help=f.metadata["help"],
                                                                                **extra)]))
        old = f.metadata.get("old_flag")
        if old:
            params.append(inspect.Parameter(_old_param(f.name), inspect.Parameter.KEYWORD_ONLY, default=False,
                                            annotation=Annotated[bool, typer.Option(old, hidden=True)]))
    return params


def _old_param(name: str) -> str:
    return f"_old_{name}"


def with_options(**groups):
    """Decorator: add flags for ``groups`` (``name=(dataclass, fields)``) to a typer command. The
    command gets ``opts``: ``{name: {field: value}}`` with the values given on the command line
    (or the defaults), old spellings folded in."""

    def deco(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        extra = [p for cls, fields in groups.values() for p in _parameters(cls, fields)]

        @functools.wraps(fn)
        def wrapper(**kw):
            opts = {}
            for gname, (_, fields) in groups.items():
                vals = opts[gname] = {}
                for f in fields:
                    vals[f.name] = kw.pop(f.name)
                    if f.metadata.get("old_flag") and kw.pop(_old_param(f.name)):
                        typer.echo(f"note: {f.metadata['old_flag']} is deprecated; use {_flag(f.name)}", err=True)
                        vals[f.name] = True
            return fn(**kw, opts=opts)

        wrapper.__signature__ = inspect.Signature(own + extra)
        wrapper.__annotations__ = {}
        return wrapper

    return deco


def field_subset(cls, names: list[str]) -> list[dataclasses.Field]:
    """The fields of ``cls`` called ``names``, in that order."""
    by = {f.name: f for f in dataclasses.fields(cls)}
    return [by[n] for n in names]
