"""What every `sam3d-body` command shares: the one-line user error, and model options built from the node's
parameter schema (so the CLI, the demo and the node take the same names, defaults and choices)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import PipelineSettings
from ..ros.params import SCHEMA


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def fail(what: str, path: str | Path | None = None, fix: str | None = None) -> CliError:
    """Build the one-line error `<what> (<file>): <fix>`."""
    msg = what + (f" ({path})" if path else "") + (f": {fix}" if fix else "")
    return CliError(msg)


# CLI flag -> node parameter
MODEL_FLAGS: dict[str, str] = {
    "--config": "model_config",
    "--weights": "weights_dir",
    "--backend": "backend",
    "--backbone-file": "backbone_file",
    "--precision": "precision",
    "--device": "device",
    "--seed": "seed",
    "--mode": "mode",
}


def add_model_args(p: argparse.ArgumentParser, flags: tuple[str, ...] = tuple(MODEL_FLAGS),
                   defaults: bool = True) -> None:
    """Add the model options `flags` with the schema's help, choices and (unless `defaults` is False, for commands
    whose values override a params file) defaults."""
    for flag in flags:
        param = SCHEMA[MODEL_FLAGS[flag]]
        kw: dict = {"help": f"{param.description} (node parameter {param.name}"
                            + (f"; default {param.default!r})" if defaults and param.default != "" else ")")}
        if param.choices:
            kw["choices"] = list(param.choices)
        if param.type is int:
            kw["type"] = int
        elif flag in ("--weights", "--backbone-file"):
            kw["type"] = Path
        if defaults and param.default != "":
            kw["default"] = param.default
        p.add_argument(flag, metavar=None if param.choices else param.name.upper(), **kw)


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    """PipelineSettings from the model options."""
    return PipelineSettings(
        model_config=args.config,
        backend=args.backend,
        weights_dir=args.weights,
        backbone_file=args.backbone_file,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        mode=args.mode,
    )
