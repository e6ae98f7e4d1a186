"""The model section: its layers, a graph by `id` and `from`, blocks used with parameters, and its initialization.

`model.layers` is a list; by default each layer reads the one before. A layer may carry `id: NAME`, and `from: NAME`
or `from: [NAME, ...]` to read earlier layers instead (`in` is the model's input, or a block's). Names point back
only, so every model is acyclic by construction, as in Keras' functional configs and Caffe's named blobs.

    model:
      blocks:
        basic:                                   # a block: layers with $parameters, used by name
          - {type: conv2d, out_channels: $f, kernel: 3, stride: $s, padding: same, bias: false}
          - {type: batchnorm}
          - {type: activation, fn: relu}
          - {type: conv2d, out_channels: $f, kernel: 3, padding: same, bias: false}
          - {type: batchnorm, id: main}
          - {type: add, from: [main, in]}       # in: the block's input, projected when its shape differs
          - {type: activation, fn: relu}
      layers:
        - {type: conv2d, out_channels: 16, kernel: 3, padding: same}
        - {use: basic, f: 16, s: 1}
        - {use: basic, f: 32, s: 2}

The expanded graph (`ModelSpec.graph()`) is a list of nodes in the order they compute, each naming its inputs; the
planner walks it for shapes and parameters, and a worker builds it into one nn.Module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from pydantic import (ConfigDict, Discriminator, Field, PrivateAttr, Tag, TypeAdapter, ValidationError,
                      field_validator, model_serializer, model_validator)

from trainq.extensions import NODE_ID, type_name
from trainq.models.spec.base import FieldError, Spec, SpecError
from trainq.models.spec.layers import LAYER_CLASSES, HeInit, InitSpec

BLOCK_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
PARAMETER = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]{0,63})$")  # a block's parameter, as a whole value: out_channels: $f
MAX_NODES = 5000  # layers in the expanded graph
MAX_DEPTH = 16  # blocks using blocks


class UseSpec(Spec):
    """A block in place of a layer, `{use: basic, f: 32, s: 2}`: its other fields are the block's parameters."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    use: str = Field(pattern=BLOCK_NAME)
    id: str | None = Field(None, pattern=NODE_ID)  # names the block's output
    from_: str | None = Field(None, alias="from")  # a block reads one input (default: the layer before)

    @model_validator(mode="after")
    def _parameters_are_values(self) -> "UseSpec":
        for name, value in (self.model_extra or {}).items():
            if not re.match(BLOCK_NAME, name):
                raise ValueError(f"{name!r} cannot name a block parameter: letters, digits and _")
            if not _plain(value):
                raise ValueError(f"{name}: a block parameter is a finite number, a string, true or false, or a list "
                                 "of them")
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, handler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in ("id", "from", "from_") and v is None)}

    def parameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def sources(self) -> list[str] | None:
        return None if self.from_ is None else [self.from_]

    def unused(self) -> set[str]:
        return {name for name in ("id", "from_") if getattr(self, name) is None}


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, (bool, int, str)):
        return not isinstance(value, str) or len(value) <= 256
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list) and depth == 0 and len(value) <= 64 and all(_plain(v, 1) for v in value)


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "use" if "use" in value and "type" not in value else value.get("type")
    return "use" if isinstance(value, UseSpec) else getattr(value, "type", None)


LAYER_TAGS = tuple(type_name(cls) for cls in LAYER_CLASSES)
# A layer, or a block used in its place. An unknown or missing type is the error `unknown_layer`, which the parser
# turns into a message listing the installed types.
LayerItem = Annotated[Union[tuple(Annotated[cls, Tag(type_name(cls))] for cls in LAYER_CLASSES)  # type: ignore
                            + (Annotated[UseSpec, Tag("use")],)],
                      Discriminator(_item_tag, custom_error_type="unknown_layer",
                                    custom_error_message="unknown layer type")]
ITEM = TypeAdapter(LayerItem)


@dataclass(frozen=True)
class Node:
    """One layer of the expanded graph."""

    index: int
    name: str  # its id (in a block: the block's name where used, a dot, its own), else type_index
    layer: Any  # the layer's spec
    inputs: tuple[int, ...]  # the nodes it reads; -1 is the model's input
    path: str  # where it is written: model.layers[3], or model.blocks.basic[2]
    used_at: str = ""  # a block's layer: where the block is used, with its parameters

    def where(self) -> str:
        return f" (in the block used at {self.used_at})" if self.used_at else ""


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)

    @property
    def chain(self) -> bool:
        """Whether every layer reads the one before: a straight stack, built as nn.Sequential."""
        return all(n.inputs == (n.index - 1,) and not getattr(n.layer, "merges", False) for n in self.nodes)

    def input_names(self, node: Node) -> list[str]:
        return ["in" if i < 0 else self.nodes[i].name for i in node.inputs]


class ModelSpec(Spec):
    init: InitSpec = HeInit(type="he")  # a name ("he") or an object with parameters ({type: normal, std: 0.1})
    # Parameterized lists of layers, used in `layers` (or another block) as {use: NAME, PARAMETER: value, ...}
    blocks: dict[Annotated[str, Field(pattern=BLOCK_NAME)], list[dict[str, Any]]] = Field(default_factory=dict,
                                                                                          max_length=100)
    layers: list[LayerItem] = Field(min_length=1, max_length=1000)  # type: ignore[valid-type]
    _graph: Graph | None = PrivateAttr(None)

    @field_validator("init", mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("blocks")
    @classmethod
    def _blocks_not_empty(cls, value: dict) -> dict:
        for name, layers in value.items():
            if not layers:
                raise ValueError(f"block {name} has no layers")
        return value

    def unused(self) -> set[str]:
        return set() if self.blocks else {"blocks"}

    def graph(self) -> Graph:
        """The layers expanded into a graph (blocks in place, names resolved); SpecError names the field at fault."""
        if self._graph is None:
            self._graph = _Expander(self.blocks).run(self.layers)
        return self._graph

    @property
    def nodes(self) -> list[Node]:
        return self.graph().nodes

    @property
    def output_layer(self) -> Any:
        """The layer whose output is the model's."""
        return self.graph().nodes[-1].layer

    def output_path(self) -> str:
        return self.graph().nodes[-1].path


# ---------------------------------------------------------------------------------------------------------------------
# Expansion: blocks in place, ids resolved, every output used
# ---------------------------------------------------------------------------------------------------------------------


class _Expander:
    def __init__(self, blocks: dict[str, list[dict[str, Any]]]):
        self.blocks = blocks
        self.nodes: list[Node] = []
        self.errors: list[FieldError] = []
        self.uses: dict[str, int] = {}

    def run(self, layers: list) -> Graph:
        self.items(layers, "model.layers", -1, "", "", ())
        if not self.errors:
            self.check_used()
        if not self.errors and len(self.nodes) > MAX_NODES:
            self.errors.append(FieldError("model.layers", f"the expanded model has {len(self.nodes)} layers, over the "
                                                          f"limit of {MAX_NODES}"))
        if self.errors:  # a block used three times fails three times alike: once is enough
            first = {}
            for e in self.errors:
                first.setdefault(e.path, e)
            raise SpecError(list(first.values()))
        return Graph(self.nodes)

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def items(self, items: list, base: str, source: int, prefix: str, used_at: str, stack: tuple[str, ...]) -> int:
        """Add a list's layers (the model's, or a block's where used) reading `source`; return its output node."""
        scope = {"in": source}
        later = {item.id: i for i, item in enumerate(items) if item.id}
        previous = source
        for i, item in enumerate(items):
            path = f"{base}[{i}]"
            names = item.sources()
            inputs = [previous] if names is None else [self.resolve(n, scope, later, i, path) for n in names]
            if isinstance(item, UseSpec):
                out = self.use(item, path, inputs[0], prefix, used_at, stack)
            else:
                out = self.layer(item, path, inputs, prefix, used_at)
            if item.id is not None:
                if item.id in scope:
                    self.fail(f"{path}.id", "in names the input; choose another id" if item.id == "in" else
                              f"id {item.id!r} is used twice in this list")
                scope[item.id] = out
            previous = out
        return previous

    def resolve(self, name: str, scope: dict[str, int], later: dict[str, int], i: int, path: str) -> int:
        if name in scope:
            return scope[name]
        if name in later:
            self.fail(f"{path}.from", f"{name!r} is this layer itself: from names earlier layers" if later[name] == i
                      else f"{name!r} is a later layer: from names only earlier layers (or in), so the model has no "
                           "cycle")
        else:
            known = ", ".join(sorted(scope))
            named = next((n for n in self.nodes if n.name == name), None)
            hint = (f": {name} is the name the dry run shows for the layer at {named.path}, which has no id; give it "
                    f"one (id: {named.layer.type}1) and name that" if named is not None else "")
            self.fail(f"{path}.from", f"no layer with id {name!r} before this one; the ids here are {known}{hint}")
        return scope["in"]

    def layer(self, layer: Any, path: str, inputs: list[int], prefix: str, used_at: str) -> int:
        merges = getattr(layer, "merges", False)
        if merges and len(inputs) < 2:
            self.fail(f"{path}.from", f"{layer.type} joins two or more layers: from: [a, b] (in is the input)")
        if not merges and len(inputs) != 1:
            self.fail(f"{path}.from", f"{layer.type} reads one layer; join several first with {{type: add}} or "
                                      "{type: concat}")
        index = len(self.nodes)
        name = prefix + (layer.id or f"{layer.type}_{index}")
        self.nodes.append(Node(index, name, layer, tuple(inputs), path, used_at))
        return index

    def use(self, item: UseSpec, path: str, source: int, prefix: str, used_at: str, stack: tuple[str, ...]) -> int:
        block = self.blocks.get(item.use)
        if block is None:
            known = ", ".join(sorted(self.blocks)) or "none (define them under model.blocks)"
            self.fail(f"{path}.use", f"no block named {item.use!r}; the blocks are {known}")
            return source
        if item.use in stack or len(stack) >= MAX_DEPTH:
            self.fail(f"{path}.use", f"block {item.use} uses itself (through {' -> '.join(stack + (item.use,))})"
                      if item.use in stack else f"blocks nest more than {MAX_DEPTH} deep")
            return source
        parameters = item.parameters()
        shown = ", ".join(f"{k}={v}" for k, v in parameters.items())
        where = f"{path} (use: {item.use}{', ' + shown if shown else ''})" + (f" in {used_at}" if used_at else "")
        referenced: set[str] = set()
        layers, failed = [], False
        for j, raw in enumerate(block):
            block_path = f"model.blocks.{item.use}[{j}]"
            unbound: list[tuple[str, str]] = []
            value = _substitute(raw, parameters, referenced, unbound, "")
            for at, name in unbound:
                self.fail(f"{block_path}{at}", f"${name} is not given where the block is used ({path}): add "
                                               f"{name}: VALUE there")
            if unbound:
                failed = True
                continue
            try:
                layers.append(ITEM.validate_python(value))
            except ValidationError as exc:
                failed = True
                for e in exc.errors(include_url=False):
                    self.fail(block_path + _sub_path(e["loc"]), f"{_message(e)} (as used at {where})")
        for name in parameters:
            if name not in referenced:
                self.fail(f"{path}.{name}", f"block {item.use} has no parameter ${name}; it takes "
                                            f"{', '.join(sorted(_parameters(block))) or 'none'}")
                failed = True
        if failed:
            return source
        self.uses[item.use] = self.uses.get(item.use, 0) + 1
        instance = item.id or f"{item.use}{self.uses[item.use]}"
        return self.items(layers, f"model.blocks.{item.use}", source, f"{prefix}{instance}.", where, stack + (item.use,))

    def check_used(self) -> None:
        read = {i for node in self.nodes for i in node.inputs}
        for node in self.nodes[:-1]:
            if node.index not in read:
                named = f" (id {node.layer.id})" if node.layer.id else ""
                self.fail(node.path, f"the output of this {node.layer.type} layer{named} is never used{node.where()}: "
                                     "name it in a later layer's from, or remove it")


def _substitute(value: Any, parameters: dict[str, Any], referenced: set[str], unbound: list, at: str) -> Any:
    """The block's layer with each `$name` replaced by its value where the block is used."""
    if isinstance(value, str):
        match = PARAMETER.match(value)
        if match is None:
            return value
        name = match.group(1)
        referenced.add(name)
        if name not in parameters:
            unbound.append((at, name))
        return parameters.get(name)
    if isinstance(value, dict):
        return {k: _substitute(v, parameters, referenced, unbound, f"{at}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, parameters, referenced, unbound, f"{at}[{i}]") for i, v in enumerate(value)]
    return value


def _parameters(block: list) -> set[str]:
    found: set[str] = set()
    _substitute(block, {}, found, [], "")
    return found


def _sub_path(loc: tuple) -> str:
    """A pydantic location inside one layer, as .field[index], without the union's tag."""
    out = ""
    for i, part in enumerate(loc):
        if i == 0 and isinstance(part, str) and (part in LAYER_TAGS or part == "use"):
            continue
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _message(error: dict) -> str:
    if error["type"] == "value_error" and error.get("ctx", {}).get("error") is not None:
        return str(error["ctx"]["error"])
    if error["type"] == "unknown_layer":
        return unknown_layer(error["input"])
    return error["msg"]


# What users of other tools call our layers, where spelling alone would not find them
LAYER_ALIASES = {"residual": "add", "skip": "add", "shortcut": "add", "sum": "add", "merge": "concat", "cat": "concat",
                 "linear": "dense", "fc": "dense", "conv": "conv2d", "maxpool": "pool", "avgpool": "pool",
                 "transformer": "transformer_encoder", "rnn": "lstm", "layer_norm": "layernorm",
                 "batch_norm": "batchnorm", "embed": "embedding", "multihead_attention": "attention",
                 "self_attention": "attention", "gap": "global_avg_pool", "adaptive_avg_pool": "global_avg_pool",
                 "positional_encoding": "positional", "relu": "activation", "sigmoid": "activation"}


def unknown_layer(value: Any) -> str:
    """Why a list item is no layer: no type, or a type not installed here (and the one probably meant)."""
    import difflib

    installed = ", ".join(sorted(LAYER_TAGS))
    if not isinstance(value, dict):
        return "a layer is an object, {type: dense, units: 10}, or a block used by name, {use: NAME}"
    kind = value.get("type")
    if kind is None:
        return f"a layer needs a type (one of {installed}), or use: BLOCK to use a block"
    near = ([LAYER_ALIASES[kind]] if isinstance(kind, str) and kind in LAYER_ALIASES
            else difflib.get_close_matches(str(kind), LAYER_TAGS, n=1, cutoff=0.6))
    hint = f"did you mean {near[0]!r}? " if near else ""
    return (f"unknown layer type {kind!r}; {hint}the layer types installed here are {installed}. Other types come "
            "from packages that the administrator installs beside trainq (`trainq layers` or GET /api/v1/layers "
            "lists what is installed, with each type's fields)")
