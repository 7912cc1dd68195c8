"""The `sam3d-body` command: a dispatcher over command modules, plus `info` and `infer`."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from .options import CliError, add_model_args

# Each module defines register(subparsers) adding parsers with set_defaults(func=callable(args) -> int).
COMMAND_MODULES: list[str] = ["sam3d_body_ros.tools.commands", "sam3d_body_ros.tools.demo", "sam3d_body_ros.tools.bench",
                              "sam3d_body_ros.tools.features"]


def _info(args: argparse.Namespace) -> int:
    from ..pipeline import model_info

    print(json.dumps(model_info(args.config), indent=2))
    return 0


def _infer(args: argparse.Namespace) -> int:
    from .infer import run_infer

    return run_infer(args)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="sam3d-body", description="SAM 3D Body human mesh recovery tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print model sizes as JSON (no weights allocated)")
    add_model_args(p, ("--config",))
    p.set_defaults(func=_info)

    p = sub.add_parser("infer", help="run the model on one image with person boxes")
    p.add_argument("image", type=Path, help="photo (PNG/JPEG)")
    p.add_argument("--box", nargs=4, type=float, action="append", required=True, metavar=("X1", "Y1", "X2", "Y2"),
                   help="person box in pixels (repeat for several persons)")
    add_model_args(p)
    p.add_argument("--out", type=Path, help="write outputs (persons stacked) to this .npz")
    p.add_argument("--render", type=Path, help="write a PNG: photo, mesh overlay, three-quarter and side views")
    p.add_argument("--spin", type=Path, metavar="FILE.gif", help="write a turntable GIF of the mesh(es)")
    p.set_defaults(func=_infer)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user errors, with a one-line message)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"sam3d-body: error: {e}", file=sys.stderr)
        return 2
