"""``tailsweep-generate``: write an embedded dataset to disk (PNG files + manifest), deterministically."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.data.generators.multilabel import (
    Multilabel4Config,
    MultilabelConfig,
    generate_multilabel,
    generate_multilabel4,
)
from tailsweep.data.generators.soft import SoftConfig, generate_soft

#: dataset name -> (config class, generator, default directory under data/)
GENERATORS: dict[str, tuple[type, Callable[..., Path], str]] = {
    "counting": (CountingConfig, generate_counting, "data/counting"),
    "multilabel": (MultilabelConfig, generate_multilabel, "data/multilabel"),
    "multilabel4": (Multilabel4Config, generate_multilabel4, "data/multilabel4"),
    "soft": (SoftConfig, generate_soft, "data/soft"),
}


def _add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    for field in dataclasses.fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("int", int):
            parser.add_argument(flag, type=int, default=None)
        elif field.type in ("float", float):
            parser.add_argument(flag, type=float, default=None)
        elif field.type in ("str", str):
            parser.add_argument(flag, type=str, default=None)
        elif str(field.type).startswith("tuple[int"):
            parser.add_argument(flag, type=int, nargs="+", default=None)
        else:
            parser.add_argument(flag, type=float, nargs="+", default=None)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``tailsweep-generate NAME [--root DIR] [--overwrite] [--<config field> VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="tailsweep-generate", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    for name, (config_cls, _, default_root) in GENERATORS.items():
        child = sub.add_parser(name, help=(config_cls.__doc__ or "").splitlines()[0])
        child.add_argument("--root", default=default_root, help=f"output directory (default {default_root})")
        child.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
        child.add_argument("--if-missing", action="store_true", help="do nothing when the manifest exists")
        _add_config_options(child, config_cls)
    args = parser.parse_args(argv)
    config_cls, generate, _ = GENERATORS[args.name]
    values: dict[str, Any] = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if getattr(args, f.name) is not None
    }
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    config = config_cls(**values)
    manifest = Path(args.root) / "manifest.csv"
    if args.if_missing and manifest.exists():
        print(f"{args.name}: {manifest} exists, nothing to do")
        return 0
    start = time.perf_counter()
    written = generate(args.root, config, overwrite=args.overwrite)
    print(f"{args.name}: wrote {written} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
