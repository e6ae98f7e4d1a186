"""From a decoded document to a JobSpec: every error with the path of its field and a hint, and the dry run's errors
found despite schema errors elsewhere."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Callable, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from trainq.models.spec.base import FieldError, SpecError
from trainq.models.spec.data import Uploaded
from trainq.models.spec.job import (AUGMENTATION_TYPES, INIT_TYPES, LAYER_TYPES, LOSS_TYPES, OPTIMIZER_TYPES,
                                    SCHEDULE_TYPES, JobSpec)
from trainq.models.spec.model import unknown_layer
from trainq.models.spec.planner import plan

_BRANCH = re.compile(r"^(int|float|str|bool|none|constrained-\w+|literal\[.*\]|function-\w+\[.*\]|"
                     r"(list|tuple|dict|nullable)\[.*\]|json-or-python\[.*\])$")
_TAGS = LAYER_TYPES | LOSS_TYPES | OPTIMIZER_TYPES | SCHEDULE_TYPES | INIT_TYPES | AUGMENTATION_TYPES
_TAGS |= {"use"}  # a block used in place of a layer
_UNIONS = {"loss", "optimizer", "schedule", "init"}



def format_path(loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into `model.layers[1].units`, leaving out union tags and branch labels."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, str) and _BRANCH.match(part):
            continue  # which member of a plain union (int | "full") failed: the message says it
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS and i > 0 and (isinstance(loc[i - 1], int) or loc[i - 1] in _UNIONS):
            continue  # the tag of a discriminated union: the message already says which member failed
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def errors_from(exc: ValidationError) -> list[FieldError]:
    """One error per path; where a union's members each failed, their messages are joined with 'or'. An unknown field
    names the fields allowed there, and the one it was probably meant to be."""
    merged: dict[str, list[str]] = {}
    for e in exc.errors(include_url=False):
        message = message_of(e)
        if e["type"] == "extra_forbidden":
            message = unknown_field(tuple(e["loc"]), JobSpec)
        elif e["type"] == "unknown_layer":
            message = unknown_layer(e["input"])
        elif e["type"] == "missing" and len(e["loc"]) == 1 and e["loc"][0] in MISSING_HINTS:
            message = f"required: add it, for example {e['loc'][0]}: {MISSING_HINTS[e['loc'][0]]}"
        messages = merged.setdefault(format_path(tuple(e["loc"])), [])
        if message not in messages:
            messages.append(message)
    return [FieldError(path, " or ".join(messages)) for path, messages in merged.items()]


def message_of(error: dict) -> str:
    """A pydantic error's message; one of our validators' in its own words, without pydantic's "Value error, "."""
    if error["type"] == "value_error" and error.get("ctx", {}).get("error") is not None:
        return str(error["ctx"]["error"])
    return error["msg"]


MISSING_HINTS = {"name": "my-run", "dataset": "{name: digits}", "model": "{layers: [{type: dense, units: 10}]}",
                 "loss": "{type: cross_entropy}", "optimizer": "{type: adam, lr: 0.001}"}

# What users of other tools write for our names (Keras, PyTorch, Lightning), where spelling alone would not find them.
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "units_out": "units",
           "out_features": "units", "filters": "out_channels", "kernel_size": "kernel", "activation": "fn",
           "rate": "p", "weight_decay": "l2"}


def unknown_field(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    """'unknown field epoch; did you mean epochs?' from the fields of the model at that place of the spec."""
    import difflib

    name = str(loc[-1])
    allowed = sorted(fields_at(loc[:-1], root))
    if not allowed:
        return f"unknown field {name!r}"
    near = ([ALIASES[name]] if ALIASES.get(name) in allowed
            else difflib.get_close_matches(name, allowed, n=1, cutoff=0.6))
    hint = f"did you mean {near[0]!r}?" if near else f"the fields here are {', '.join(allowed)}"
    return f"unknown field {name!r}; {hint}"


def fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> set[str]:
    """The field names of the spec model(s) found by following a pydantic location from `root`: field names, list
    indices, and the tags that pick a member of a discriminated union."""
    found: list[Any] = [root]
    for part in loc:
        step: list[Any] = []
        for kind in _concrete(found):
            if isinstance(part, int) and get_origin(kind) is list:
                step += get_args(kind)[:1]
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                fields = {info.alias or name: info for name, info in kind.model_fields.items()}
                if isinstance(part, str) and part in fields:
                    step.append(fields[part].annotation)
                elif "type" in kind.model_fields and part in get_args(kind.model_fields["type"].annotation):
                    step.append(kind)  # the tag of a union member: stay on that member
        found = step
    return {info.alias or name for kind in _concrete(found) if isinstance(kind, type) and issubclass(kind, BaseModel)
            for name, info in kind.model_fields.items()}


def _concrete(kinds: list[Any]) -> list[Any]:
    """Unwrap Annotated, Optional and unions down to classes and list[...] types."""
    out: list[Any] = []
    for kind in kinds:
        origin = get_origin(kind)
        if origin is Annotated:
            out += _concrete([get_args(kind)[0]])
        elif origin is Union or origin is types.UnionType:
            out += _concrete(list(get_args(kind)))
        else:
            out.append(kind)
    return out



def parse_spec(data: Any, uploads: Callable[[str], Uploaded | None] | None = None) -> JobSpec:
    """Validate a decoded spec; raise SpecError listing every field at fault.

    `uploads` looks up an uploaded dataset version by its reference, NAME or NAME@VERSION (the service passes one).
    """
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = errors_from(exc)
        raise SpecError(errors + _plan_errors_besides(data, errors, uploads)) from None
    if spec.dataset.name == "upload" and uploads is not None:
        spec.dataset.resolve(uploads(spec.dataset.upload))
    plan(spec)
    return spec


SHAPING = {"dataset", "model", "loss", "(root)"}  # the sections a dry run's shapes and outputs depend on
PLACEHOLDERS = {"optimizer": {"type": "adam"}, "name": "spec"}  # for required sections; the others take defaults


def _plan_errors_besides(data: Any, errors: list[FieldError], uploads) -> list[FieldError]:
    """The dry run's errors (shapes, output units), found despite schema errors elsewhere, so that every error is
    listed at once: a bad optimizer must not hide that the last layer has the wrong width. Only where the schema
    errors are outside the sections the plan reads; those are replaced by a placeholder or their defaults."""
    broken = {re.split(r"[.\[]", e.path)[0] for e in errors}
    if not isinstance(data, dict) or broken & SHAPING:
        return []
    patched = {k: v for k, v in data.items() if k not in broken}
    patched.update({k: PLACEHOLDERS[k] for k in broken if k in PLACEHOLDERS})
    try:
        spec = JobSpec.model_validate(patched)
        if spec.dataset.name == "upload" and uploads is not None:
            spec.dataset.resolve(uploads(spec.dataset.upload))
        plan(spec)
    except (ValidationError, SpecError) as exc:
        found = exc.errors if isinstance(exc, SpecError) else []
        return [e for e in found if re.split(r"[.\[]", e.path)[0] not in broken]
    return []
