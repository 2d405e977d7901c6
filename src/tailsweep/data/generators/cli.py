"""tailsweep-generate: write a dataset to disk as PNG files + a CSV manifest, deterministically.

The synthetic sets need nothing; the real-image sets read a local source (never a download) and say how to get it
when it is absent. Every option is a field of the dataset's config class, shown with its default by
``tailsweep-generate <dataset> --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailsweep.data.generators.common import MissingSourceError
from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.data.generators.fashion_lt import FashionLTConfig, generate_fashion_lt
from tailsweep.data.generators.mnist_sum import MnistSumConfig, generate_mnist_sum
from tailsweep.data.generators.multilabel import (
    Multilabel4Config,
    MultilabelConfig,
    generate_multilabel,
    generate_multilabel4,
)
from tailsweep.data.generators.soft import SoftConfig, generate_soft


@dataclass(frozen=True)
class Dataset:
    """One sub-command: its config class (fields = options), its generator and its default directory."""

    config_cls: type
    generate: Callable[..., Path]
    default_root: str


#: sub-command name -> dataset (the default directory is what the matching configs/data/*.yaml reads)
GENERATORS: dict[str, Dataset] = {
    "counting": Dataset(CountingConfig, generate_counting, "data/counting"),
    "multilabel": Dataset(MultilabelConfig, generate_multilabel, "data/multilabel"),
    "multilabel4": Dataset(Multilabel4Config, generate_multilabel4, "data/multilabel4"),
    "soft": Dataset(SoftConfig, generate_soft, "data/soft"),
    "mnist-sum": Dataset(MnistSumConfig, generate_mnist_sum, "data/mnist_sum"),
    "fashion-lt": Dataset(FashionLTConfig, generate_fashion_lt, "data/fashion_lt"),
}


HELP_WIDTH = 120


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option, descriptions and the dataset list as written, a wide help column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=HELP_WIDTH)


def _escape(text: str) -> str:
    """argparse %-formats help strings: a bare ``%`` must be ``%%``."""
    return text.replace("%", "%%")


METAVARS = {int: "N", float: "X", str: "TEXT"}


def _option_type(annotation: Any) -> tuple[type, str | int | None]:
    """``(element type, nargs)`` of a config field: ``X``, ``X | None``, ``tuple[X, X, X]`` or ``tuple[X, ...]``."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return args[0], "+" if Ellipsis in args else len(args)
    if args:  # X | None
        return args[0], None
    return annotation, None


def _add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind, nargs = _option_type(hints[field.name])
        choices = field.metadata.get("choices")
        metavar = None if choices else field.metadata.get("metavar") or METAVARS[kind]
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind, nargs=nargs,
                            default=field.default, choices=choices, metavar=metavar,
                            help=_escape(field.metadata.get("help", "")))


def dataset_list() -> str:
    """One entry a dataset with its defaults: size, classes, distribution (the top-level ``--help``)."""
    column = max(map(len, GENERATORS)) + 4
    entries = [textwrap.fill(dataset.config_cls().describe(), HELP_WIDTH, initial_indent=f"  {name:<{column - 2}}",
                             subsequent_indent=" " * column) for name, dataset in GENERATORS.items()]
    return "datasets (defaults: size, classes, distribution):\n" + "\n".join(entries)


def build_parser() -> argparse.ArgumentParser:
    """The ``tailsweep-generate`` parser: one sub-command a dataset, one option a config field."""
    examples = ("examples:\n  tailsweep-generate counting                      # data/counting, the default set\n"
                "  tailsweep-generate counting --num-images 2000 --root data/counting_small\n"
                "  tailsweep-generate fashion-lt --help             # its options and their defaults")
    parser = argparse.ArgumentParser(prog="tailsweep-generate", description=__doc__.replace("``", ""),
                                     formatter_class=_HelpFormatter, epilog=dataset_list() + "\n\n" + examples)
    sub = parser.add_subparsers(dest="name", required=True, metavar="DATASET",
                                help=f"one of {', '.join(GENERATORS)} (listed below)")
    for name, dataset in GENERATORS.items():
        config_cls = dataset.config_cls
        module_doc = (sys.modules[config_cls.__module__].__doc__ or "").replace("``", "")
        child = sub.add_parser(name, formatter_class=_HelpFormatter, description=_escape(module_doc.strip()))
        child.add_argument("--root", default=dataset.default_root, metavar="DIR", help="output directory")
        child.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
        child.add_argument("--if-missing", action="store_true", help="do nothing when the manifest exists")
        _add_config_options(child, config_cls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``tailsweep-generate DATASET [--root DIR] [--overwrite] [--if-missing] [--<config field> VALUE ...]``."""
    args = build_parser().parse_args(argv)
    dataset = GENERATORS[args.name]
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(dataset.config_cls)}
    config = dataset.config_cls(**{name: tuple(value) if isinstance(value, list) else value
                                   for name, value in values.items()})
    manifest = Path(args.root) / "manifest.csv"
    if args.if_missing and manifest.exists():
        print(f"{args.name}: {manifest} exists, nothing to do")
        return 0
    start = time.perf_counter()
    try:
        written = dataset.generate(args.root, config, overwrite=args.overwrite)
    except MissingSourceError as error:
        print(f"tailsweep-generate: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: wrote {written} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
