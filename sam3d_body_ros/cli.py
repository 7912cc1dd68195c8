"""The `sam3d-body` command: a dispatcher over command modules, plus `info` and `infer`."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# Each module defines register(subparsers) adding parsers with set_defaults(func=callable(args) -> int).
COMMAND_MODULES: list[str] = ["sam3d_body_ros.runtime.commands", "sam3d_body_ros.ros.demo", "sam3d_body_ros.runtime.bench"]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def fail(what: str, path: str | Path | None = None, fix: str | None = None) -> CliError:
    """Build the one-line error `<what> (<file>): <fix>`."""
    msg = what + (f" ({path})" if path else "") + (f": {fix}" if fix else "")
    return CliError(msg)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", choices=["tiny", "full"], help="model dimensions (default tiny)")
    p.add_argument("--weights", type=Path, help="upstream checkpoint dir (model.ckpt, model_config.yaml, assets/mhr_model.pt)")
    p.add_argument("--backend", default="auto",
                   help="backbone runtime: auto (torch-int8 on CUDA, torch on CPU), torch, torch-int8, onnxruntime, "
                        "tensorrt, pt2")
    p.add_argument("--backbone-file", type=Path, help="backbone artifact for onnxruntime/tensorrt/pt2 (.onnx, .engine, .pt2)")
    p.add_argument("--precision", default="auto",
                   help="auto (backend default for the device: fp16/fp32 torch, fp8/int8 torch-int8), fp32, bf16, fp16, "
                        "fp8, int8")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights when --weights is not given")


def _info(args: argparse.Namespace) -> int:
    from .core.pipeline import model_info

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
    p.add_argument("--config", default="full", choices=["tiny", "full"])
    p.set_defaults(func=_info)

    p = sub.add_parser("infer", help="run the model on one image with person boxes")
    p.add_argument("image", type=Path)
    p.add_argument("--box", nargs=4, type=float, action="append", required=True, metavar=("X1", "Y1", "X2", "Y2"))
    _add_model_args(p)
    p.add_argument("--out", type=Path, help="write outputs (persons stacked) to this .npz")
    p.add_argument("--render", type=Path, help="write a PNG of the mesh over the image")
    p.set_defaults(func=_infer)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user errors, with a one-line message)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"sam3d-body: error: {e}", file=sys.stderr)
        return 2
