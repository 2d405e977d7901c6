"""The metric registry: short stable names -> metric classes, filled by one ``register_metric`` decorator per name.

A registration says which class a name builds (with which keyword arguments), for which tasks, in which default
sets, and whether higher is better; everything else reads the registry: ``build_metric_collection`` and its
defaults, the table in ``tailsweep.metrics.collections``' docstring (tested against ``defaults_table()``), the
tests, and the reports that need a metric's direction (``metric_direction``). ``build_metric`` also takes a
``_target_`` entry (a class outside the package, by config alone): the template passes the number of classes or
labels by the keyword the class's signature names (``num_classes`` or ``num_labels``).

    @register_metric("rps", tasks=ORDERED_TASKS, default_for=ORDINAL_TASKS)
    class RankedProbabilityScore(ClassMetric): ...

    register_metric("macro_recall", tasks=HARD_LABEL_TASKS, default_for=..., average="macro")(MulticlassRecall)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torchmetrics import Metric

from tailsweep.tasks import ORDINAL_TASKS, TASKS, check_task

#: Tasks whose classes carry an order a distance can use: ordinal labels, and soft rows over ordered classes.
ORDERED_TASKS = ORDINAL_TASKS | {"soft"}
#: Keywords a size may be passed by (the number of classes, or of labels for multi-label metrics).
SIZE_KEYWORDS = ("num_classes", "num_labels")
#: Options of ``build_metric`` a registered class receives when its signature names them.
OPTION_KEYWORDS = ("max_groups", "max_group_size", "validate_args")

M = TypeVar("M", bound=type)


@dataclass(frozen=True)
class MetricOptions:
    """What a metric constructor may need beyond the number of classes."""

    validate_args: bool = True
    max_groups: int | None = None
    max_group_size: int | None = None


@dataclass(frozen=True)
class RegisteredMetric:
    """One registration: ``cls(size, **kwargs, **options it names)`` for the ``tasks`` it fits.

    Attributes:
        name: the short name, also the logged key (``{stage}/{name}``).
        cls: the metric class.
        tasks: tasks that may ask for the name.
        default_for: tasks whose val/test default set holds it; ``train_default_for``: whose train set does.
        kwargs: fixed keyword arguments (e.g. ``decoding="argmax"``).
        requires: options that must be given (``max_group_size``): without them the name is left out of the
            defaults and ``build_metric`` raises a message naming the option.
        min_size: least number of classes or labels for the default sets (top-5 recall needs more than 5 labels).
        max_size: most classes for the default sets (None: any); above it the metric is built only when named
            (the group-sum distributions keep C floats per sample).
        higher_is_better: the direction reports and checkpoint monitors use (the class's attribute by default;
            None for a non-scalar such as a confusion matrix).
    """

    name: str
    cls: type
    tasks: frozenset[str]
    default_for: frozenset[str] = frozenset()
    train_default_for: frozenset[str] = frozenset()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    min_size: int = 1
    higher_is_better: bool | None = None
    max_size: int | None = None

    def fits(self, num_classes: int | None) -> bool:
        """True when a default set for ``num_classes`` (None: any number) may hold the metric."""
        return num_classes is None or (num_classes >= self.min_size
                                       and (self.max_size is None or num_classes <= self.max_size))

    @property
    def needs_group(self) -> bool:
        """True when ``update`` takes ``group_id`` (a metric of group sums)."""
        return "group_id" in inspect.signature(self.cls.update).parameters

    def build(self, num_classes: int, options: MetricOptions) -> Metric:
        """The metric for ``num_classes`` (or labels) with the options its class's signature names."""
        for option in self.requires:
            if getattr(options, option) is None:
                raise ValueError(
                    f"{self.cls.__name__}: needs {option} (the most members a group can have, e.g. 8) to size the "
                    f"support of the summed count; pass {option} to build_metric_collection"
                )
        accepted = _keywords(self.cls)
        extra = {key: getattr(options, key) for key in OPTION_KEYWORDS if key in accepted}
        return instantiate_sized(self.cls, num_classes, **self.kwargs, **extra)


#: name -> its registrations (one per set of tasks; ``ece`` builds a different class for multi-label).
REGISTRY: dict[str, list[RegisteredMetric]] = {}


def register_metric(
    name: str,
    *,
    tasks: Iterable[str],
    default_for: Iterable[str] = (),
    train_default_for: Iterable[str] = (),
    requires: tuple[str, ...] = (),
    min_size: int = 1,
    max_size: int | None = None,
    higher_is_better: bool | None = None,
    **kwargs: Any,
) -> Callable[[M], M]:
    """Class decorator registering ``name`` (see ``RegisteredMetric``); stackable, and callable on a class
    defined elsewhere (``register_metric(...)(MulticlassRecall)``). Extra keyword arguments are fixed
    constructor arguments. A name registered twice must be for disjoint tasks with one direction."""
    entry_tasks = frozenset(check_task(t, f"register_metric({name!r}): task") for t in tasks)
    defaults, train = frozenset(default_for), frozenset(train_default_for)
    if not (defaults | train) <= entry_tasks:
        raise ValueError(f"register_metric({name!r}): default sets {sorted(defaults | train)} must be among its "
                         f"tasks {sorted(entry_tasks)}")

    def register(cls: M) -> M:
        direction = higher_is_better if higher_is_better is not None else getattr(cls, "higher_is_better", None)
        entry = RegisteredMetric(name, cls, entry_tasks, defaults, train, dict(kwargs), requires, min_size,
                                 direction, max_size)
        others = REGISTRY.setdefault(name, [])
        for other in others:
            if other.tasks & entry_tasks or other.higher_is_better != direction:
                raise ValueError(f"register_metric: {name!r} is registered twice for tasks "
                                 f"{sorted(other.tasks & entry_tasks)} or with two directions")
        others.append(entry)
        return cls

    return register


def registered(name: str, task: str) -> RegisteredMetric | None:
    """The registration of ``name`` for ``task`` (None when the name does not fit the task)."""
    return next((entry for entry in REGISTRY.get(name, ()) if task in entry.tasks), None)


def metric_names(task: str) -> tuple[str, ...]:
    """Every registered name usable for ``task``, in registration order."""
    check_task(task, "metrics: task")
    return tuple(name for name in REGISTRY if registered(name, task) is not None)


def metric_direction(name: str) -> bool | None:
    """``higher_is_better`` of a registered name: True (accuracy, mAP), False (errors, losses), None (matrices).

    ``stage/`` and ``raw/`` prefixes are stripped (``val/raw/ev_mae`` -> ``ev_mae``); ``KeyError`` for a name
    that is not registered."""
    short = name.rsplit("/", 1)[-1]
    if short not in REGISTRY:
        raise KeyError(f"metric_direction: {short!r} is not a registered metric; registered: {sorted(REGISTRY)}")
    return REGISTRY[short][0].higher_is_better


def default_names(task: str, *, train: bool, num_classes: int | None, options: MetricOptions) -> tuple[str, ...]:
    """The names of ``task``'s default train or val/test set that fit ``num_classes`` (None: any) and
    ``options``."""
    names = []
    for name in metric_names(task):
        entry = registered(name, task)
        assert entry is not None
        wanted = entry.train_default_for if train else entry.default_for
        if task in wanted and entry.fits(num_classes) \
                and all(getattr(options, option) is not None for option in entry.requires):
            names.append(name)
    return tuple(names)


def defaults_table() -> str:
    """The reST table of the default sets by task (val/test with every option given), from the registry."""
    rows = []
    for task in TASKS:
        train = ", ".join(default_names(task, train=True, num_classes=None, options=MetricOptions()))
        full = MetricOptions(max_groups=1, max_group_size=1)  # every option given: names that require one
        notes = []
        for name in default_names(task, train=False, num_classes=None, options=full):
            entry = registered(name, task)
            assert entry is not None
            conditions = [f"with {', '.join(entry.requires)}"] if entry.requires else []
            conditions += [f"C>{entry.min_size - 1}"] if entry.min_size > 1 else []
            conditions += [f"C<={entry.max_size}"] if entry.max_size is not None else []
            notes.append(f"{name} ({', '.join(conditions)})" if conditions else name)
        rows.append((task, train, _wrap(", ".join(notes), 56)))
    widths = (12, 36, 56)
    rule = "  ".join("=" * w for w in widths)
    header = "  ".join(h.ljust(w) for h, w in zip(("task", "train", "val / test"), widths, strict=True))
    lines = [rule, header.rstrip(), rule]
    for task, train, evaluated in rows:
        for index, part in enumerate(evaluated):
            first = (task, train) if index == 0 else ("", "")
            lines.append("  ".join(c.ljust(w) for c, w in zip((*first, part), widths, strict=True)).rstrip())
    lines.append(rule)
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, current] if current else lines or [""]


# ------------------------------------------------------------------------------------------ sizes and targets


def _keywords(cls: Callable[..., Any]) -> set[str]:
    """The keyword arguments ``cls`` names, following ``**kwargs`` up its bases' ``__init__`` (a subclass that
    forwards ``**kwargs`` still takes its base's ``validate_args``)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing by keyword
        return set()
    names = set(signature.parameters)
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    for base in getattr(cls, "__mro__", ())[1:] if forwards else ():
        if "__init__" not in vars(base) or base is object:
            continue
        parameters = inspect.signature(base.__init__).parameters
        names |= set(parameters) - {"self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return names


def instantiate_sized(cls: Callable[..., Metric], size: int, **kwargs: Any) -> Metric:
    """``cls(**kwargs)`` with the number of classes or labels passed by the keyword its signature names
    (``num_classes`` or ``num_labels``; a class naming neither gets none)."""
    keyword = next((k for k in SIZE_KEYWORDS if k in _keywords(cls)), None)
    if keyword is not None and keyword not in kwargs:
        kwargs[keyword] = size
    metric = cls(**kwargs)
    if not isinstance(metric, Metric):
        raise ValueError(f"build_metric: {getattr(cls, '__name__', cls)!r} built a {type(metric).__name__}, not "
                         "a torchmetrics Metric")
    return metric


def is_target_entry(entry: object) -> bool:
    """True for a ``_target_`` entry: a mapping with ``_target_`` (a class path) and its keyword arguments."""
    return isinstance(entry, Mapping) and "_target_" in entry


def target_key(entry: Mapping[str, Any] | Callable[..., Any]) -> str:
    """The logged name of a ``_target_`` entry or a factory: ``_name_`` if given, else the class name in
    snake case (``mylib.WeightedKappa`` -> ``weighted_kappa``)."""
    if isinstance(entry, Mapping):
        if "_name_" in entry:
            return str(entry["_name_"])
        class_name = str(entry["_target_"]).rsplit(".", 1)[-1]
    else:
        func = getattr(entry, "func", entry)  # functools.partial from Hydra's _partial_
        class_name = getattr(func, "__name__", type(entry).__name__)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", class_name).lower()


def build_target(entry: Mapping[str, Any] | Callable[..., Metric], num_classes: int) -> Metric:
    """A metric from a ``_target_`` entry (instantiated by Hydra) or a factory (e.g. a Hydra ``_partial_``),
    with ``num_classes`` passed as ``num_classes`` or ``num_labels`` when the signature has it."""
    if isinstance(entry, Mapping):
        from hydra.utils import get_class
        from omegaconf import DictConfig, OmegaConf

        plain = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
        plain.pop("_name_", None)
        target = plain.pop("_target_")
        try:
            cls = get_class(target) if isinstance(target, str) else target
        except Exception as error:  # hydra wraps the import error; say which entry it was
            raise ValueError(f"build_metric: cannot import the _target_ {target!r} of a metric entry: {error}") \
                from error
        from hydra.utils import instantiate

        # nested _target_ values (rare) are Hydra's to build; the size goes in by keyword
        keyword = next((k for k in SIZE_KEYWORDS if k in _keywords(cls)), None)
        if keyword is not None:
            plain.setdefault(keyword, num_classes)
        metric = instantiate({"_target_": target, **plain})
        if not isinstance(metric, Metric):
            raise ValueError(f"build_metric: the _target_ {target!r} built a {type(metric).__name__}, not a "
                             "torchmetrics Metric")
        return metric
    if not callable(entry):
        raise ValueError(f"build_metric: a metric entry must be a registered name, a _target_ mapping or a "
                         f"factory, got {type(entry).__name__} {entry!r}")
    return instantiate_sized(entry, num_classes)


__all__ = [
    "ORDERED_TASKS",
    "REGISTRY",
    "MetricOptions",
    "RegisteredMetric",
    "build_target",
    "default_names",
    "defaults_table",
    "instantiate_sized",
    "is_target_entry",
    "metric_direction",
    "metric_names",
    "register_metric",
    "registered",
    "target_key",
]
