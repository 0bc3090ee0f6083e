"""The run document: what a cnncli checkpoint says about itself, as one typed, validated value.

Every cnncli file that carries a network's description (model.safetensors, last.safetensors,
train_state.safetensors, an export's ONNX/TorchScript/safetensors metadata) carries the same
JSON document. `RunDocument` is that document: built by `build_document` (the one place that
assembles it from a run's parts), written with `to_json`, read back with `from_json`, which
checks every value the rebuilding code relies on (type, range, finiteness, lengths that must
agree) and refuses a damaged or hand-edited file in one line instead of failing, or allocating
without bound, inside a constructor.

Keys this version does not know (a newer cnncli's, a feature's own record such as `finetune`)
are kept in `extra` and written back unchanged. The document is also a read-only mapping of its
JSON form (`doc["input_size"]`, `doc.get("finetune")`), for callers that index it like a dict;
each lookup returns a fresh copy, so nothing a caller does to it changes the document.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cnncli.errors import InputError

FORMAT_VERSION = 1
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 1024
MAX_SIDE = 65536


class _JsonView(Mapping):
    """A read-only mapping over `to_dict()`; each lookup is a fresh copy."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


# ------------------------------------------------------------------------------ the checks
def _count(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 1e308 if isinstance(value, int) else math.isfinite(value)  # no float(10**400)


def _numbers(value, length: int | None) -> bool:
    return (isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_CHANNELS
            and (length is None or len(value) == length) and all(_number(v) for v in value))


# The only constructor arguments a file may pass to a network (hand-built or timm): anything
# else (timm's `checkpoint_path`, `pretrained_cfg_overlay`...) would let a file steer the build.
MODEL_KWARGS = frozenset({"dropout", "drop_rate", "drop_path_rate", "global_pool"})


def _rate(value) -> bool:
    return _number(value) and 0 <= value <= 1


def _table(value) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _channels_note(length: int | None) -> str:
    return f" ({length})" if length is not None else ""


class _Checker:
    """Raises the one-line error for the first value that is wrong."""

    def __init__(self, source):
        self.where = f"{source}" if source is not None else "cnncli metadata"
        self.prefix = f"{source}: corrupt cnncli metadata" if source is not None else "invalid cnncli metadata"

    def __call__(self, key: str, value, ok: bool, what: str) -> None:
        if value is not None and not ok:
            try:
                shown = json.dumps(value, default=str)
            except (TypeError, ValueError, RecursionError):
                shown = repr(value)
            raise InputError(f"{self.prefix}: '{key}' must be {what}, got {shown[:60]}")


def _check_model(spec: Mapping[str, Any], check: _Checker) -> None:
    check("model.name", spec.get("name"), isinstance(spec.get("name"), str) and spec.get("name") != "",
          "a network name")
    check("model.num_classes", spec.get("num_classes"), _count(spec.get("num_classes"), 1, MAX_CLASSES),
          f"a number of classes from 1 to {MAX_CLASSES:,}")
    check("model.in_chans", spec.get("in_chans"), _count(spec.get("in_chans"), 1, MAX_CHANNELS),
          f"a number of channels from 1 to {MAX_CHANNELS}")
    kwargs = spec.get("kwargs")
    check("model.kwargs", kwargs, _table(kwargs) and all(k in MODEL_KWARGS for k in kwargs)
          and all(_rate(v) for k, v in kwargs.items() if k != "global_pool")
          and isinstance(kwargs.get("global_pool", ""), str),
          "a table of the constructor arguments " + ", ".join(sorted(MODEL_KWARGS))
          + " (rates from 0 to 1)")
    check("model.model_file", spec.get("model_file"), isinstance(spec.get("model_file"), Mapping),
          "a model file's table")


def _check_document(doc: Mapping[str, Any], check: _Checker) -> None:
    """The values of a document's known keys (the model spec is checked on its own)."""
    fmt = doc.get("format")
    check("format", fmt, _count(fmt, 1, 10**6), "a format number")
    if _count(fmt, 1, 10**6) and fmt > FORMAT_VERSION:
        raise InputError(f"{check.where}: written by a newer cnncli (format {fmt}; this "
                         f"one reads format {FORMAT_VERSION}); upgrade cnncli to read it")
    check("kind", doc.get("kind"), isinstance(doc.get("kind"), str), "a kind name")
    num_classes = doc.get("num_classes")
    check("num_classes", num_classes, _count(num_classes, 1, MAX_CLASSES),
          f"a number of classes from 1 to {MAX_CLASSES:,}")
    names = doc.get("class_names")
    check("class_names", names, isinstance(names, (list, tuple)) and len(names) <= MAX_CLASSES
          and all(isinstance(n, str) for n in names), "a list of names")
    classes = num_classes if num_classes is not None else (doc.get("model") or {}).get("num_classes")
    if names is not None and isinstance(classes, int) and len(names) != classes:
        raise InputError(f"{check.prefix}: {len(names)} class names for {classes} classes")
    size = doc.get("input_size")
    check("input_size", size, isinstance(size, (list, tuple)) and len(size) == 3
          and _count(size[0], 1, MAX_CHANNELS) and all(_count(d, 1, MAX_SIDE) for d in size[1:]),
          f"[C, H, W] with C from 1 to {MAX_CHANNELS} and sides from 1 to {MAX_SIDE}")
    channels = size[0] if size is not None else (doc.get("model") or {}).get("in_chans")
    check("mean", doc.get("mean"), _numbers(doc.get("mean"), channels),
          f"one finite number per channel{_channels_note(channels)}")
    std = doc.get("std")
    check("std", std, _numbers(std, channels) and all(s > 0 for s in std),
          f"one positive finite number per channel{_channels_note(channels)}")
    check("dataset", doc.get("dataset"), isinstance(doc.get("dataset"), str), "a dataset name")
    check("epoch", doc.get("epoch"), _count(doc.get("epoch"), 0, 10**9), "a number of epochs from 0")
    check("seed", doc.get("seed"), _count(doc.get("seed"), -(2**63), 2**64 - 1),
          "a seed torch takes (-2**63 to 2**64-1)")
    metrics = doc.get("metrics")
    check("metrics", metrics, _table(metrics) and all(
        v is None or isinstance(v, (str, bool)) or _number(v) for v in metrics.values()),
        "a table of finite numbers")
    versions = doc.get("versions")
    check("versions", versions, _table(versions) and all(isinstance(v, str) for v in versions.values()),
          "a table of version strings")
    for key in ("recipe", "data_source", "weights_source"):
        check(key, doc.get(key), _table(doc.get(key)), "a table")


def _plain(value: Any) -> Any:
    """JSON's own types: mappings to dicts, tuples to lists, a deep copy."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.copy(value)


# ------------------------------------------------------------------------------ the document
@dataclass(frozen=True)
class ModelSpec(_JsonView):
    """What rebuilds the network: a registry name (or model file) and its constructor arguments."""

    name: str
    num_classes: int | None = None
    in_chans: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    model_file: Mapping[str, Any] | None = None  # a TOML network's whole layer list
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = ("name", "num_classes", "in_chans", "kwargs", "model_file")

    def __post_init__(self):
        _check_model(self._known(), _Checker(None))

    def _known(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source=None) -> ModelSpec:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise InputError(f"{source}: cnncli metadata without a model name" if source is not None
                             else "cnncli metadata without a model name")
        _check_model(data, _Checker(source))
        known = {k: _plain(data[k]) for k in cls._KEYS if data.get(k) is not None}
        return cls(**known, extra={k: _plain(v) for k, v in data.items() if k not in cls._KEYS})

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name}
        for key in ("num_classes", "in_chans"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["kwargs"] = _plain(self.kwargs)
        if self.model_file is not None:
            out["model_file"] = _plain(self.model_file)
        out.update(_plain(self.extra))
        return out


@dataclass(frozen=True)
class RunDocument(_JsonView):
    """The cnncli document of a checkpoint (see the module doc); every field but `model` optional."""

    model: ModelSpec
    kind: str = "model"
    format: int = FORMAT_VERSION
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None
    data_source: Mapping[str, Any] | None = None
    epoch: int | None = None
    metrics: Mapping[str, Any] | None = None
    seed: int | None = None
    versions: Mapping[str, str] | None = None
    recipe: Mapping[str, Any] | None = None
    weights_source: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know

    def __post_init__(self):
        if not isinstance(self.model, ModelSpec):
            raise TypeError("RunDocument.model must be a ModelSpec (use RunDocument.from_dict for mappings)")
        _check_document(self._known(), _Checker(None))

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    def _known(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._field_names()}

    def __getitem__(self, key: str) -> Any:
        # one key's JSON value without building the whole document (predict reads three per batch)
        if key in ("format", "kind") or key in self._field_names():
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value.to_dict() if isinstance(value, ModelSpec) else _plain(value)
        return _plain(self.extra[key])

    # ---------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source=None) -> RunDocument:
        """A document from its JSON form, every value checked (`source` names the file in errors)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
            raise InputError(f"{source}: cnncli metadata without a model name" if source is not None
                             else "cnncli metadata without a model name")
        model = ModelSpec.from_dict(data["model"], source)
        _check_document(data, _Checker(source))
        names = cls._field_names()
        known: dict[str, Any] = {}
        for key in names:
            value = data.get(key)
            if key == "model" or value is None:
                continue
            if key in ("class_names", "input_size"):
                value = tuple(value)
            elif key in ("mean", "std"):
                value = tuple(float(v) for v in value)
            else:
                value = _plain(value)
            known[key] = value
        extra = {k: _plain(v) for k, v in data.items() if k not in names}
        return cls(model=model, **known, extra=extra)

    @classmethod
    def from_json(cls, text: str, source=None) -> RunDocument:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError, TypeError):
            raise InputError(f"{source}: corrupt cnncli metadata (not JSON)" if source is not None
                             else "corrupt cnncli metadata (not JSON)") from None
        try:
            return cls.from_dict(data, source)
        except RecursionError:
            raise InputError(f"{source}: corrupt cnncli metadata (nested too deeply)") from None

    # ---------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """The JSON form: known keys that have a value, then the extra keys as they came."""
        out: dict[str, Any] = {"format": self.format, "kind": self.kind}
        for key in self._field_names():
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_dict() if isinstance(value, ModelSpec) else _plain(value)
        out.update(_plain(self.extra))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    def replace(self, **changes) -> RunDocument:
        """A copy with keys changed (and checked again); None removes a key; unknown names are extras."""
        data = self.to_dict()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value.to_dict() if isinstance(value, ModelSpec) else _plain(value)
        return RunDocument.from_dict(data)


def as_document(meta: RunDocument | Mapping[str, Any], source=None) -> RunDocument:
    """A RunDocument as it is, or one checked from a mapping of its JSON form."""
    return meta if isinstance(meta, RunDocument) else RunDocument.from_dict(meta, source)


def _finite_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # NaN and infinities are not JSON (and a reader refuses them): a metric that is one is unknown
    if metrics is None:
        return None
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def build_document(*, model: Mapping[str, Any], num_classes: int | None = None,
                   class_names=None, input_size=None, mean=None, std=None, dataset: str | None = None,
                   data_source: Mapping | None = None, epoch: int | None = None,
                   metrics: Mapping[str, Any] | None = None, seed: int | None = None,
                   versions: Mapping[str, str] | None = None, recipe: Mapping | None = None,
                   weights_source: Mapping | None = None, kind: str = "model",
                   extra: Mapping[str, Any] | None = None) -> RunDocument:
    """THE way a document is made from a run's parts (train, finetune, predict, viz, export).

    The model spec takes the run's class and channel counts (the network was built for them);
    `extra` holds a feature's own keys (`finetune`, `pretrained_source`...) and, as before,
    wins over the named ones.
    """
    spec = dict(model.to_dict() if isinstance(model, ModelSpec) else model)
    if num_classes is not None:
        spec["num_classes"] = int(num_classes)
    if input_size is not None:
        spec["in_chans"] = int(input_size[0])
    doc = {"format": FORMAT_VERSION, "kind": kind, "model": spec, "num_classes": num_classes,
           "class_names": None if class_names is None else list(class_names),
           "input_size": None if input_size is None else [int(v) for v in input_size],
           "mean": None if mean is None else list(mean), "std": None if std is None else list(std),
           "dataset": dataset, "data_source": data_source, "epoch": epoch,
           "metrics": _finite_metrics(metrics), "seed": seed, "versions": versions, "recipe": recipe,
           "weights_source": weights_source}
    doc.update(extra or {})
    return RunDocument.from_dict(doc)
