"""Command line of the papers' experiments: `skinscreen-research experiments | dermoscopy |
dermoscopy-lite0 | model-selection`.

Thin over the package, like `skinscreen-trainer`: options come from the
configurations' fields, pydantic validates them, and bad input ends with exit
code 2 and a message naming the option.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from skinscreen.research import model_selection
from skinscreen.research.dermoscopy_backbone import LITE0_COMPARISON_OPTIONS, compare_backbone
from skinscreen.research.dermoscopy_experiments import DermoscopyConfig, run_dermoscopy
from skinscreen.research.fusion_experiments import (
    FIXED_BY_EXPERIMENTS,
    FusionExperimentsConfig,
    run_fusion_experiments,
)
from skinscreen.trainer.cli_options import (
    add_config_options,
    add_run_options,
    command_line,
    model_from_args,
    run_command,
)
from skinscreen.trainer.config import TrainConfig

PROGRAM = "skinscreen-research"


def command_experiments(args: argparse.Namespace) -> int:
    """The fusion paper's tables and t-SNE figures on PAD-UFES-20."""
    config = model_from_args(TrainConfig, args)
    experiments = model_from_args(FusionExperimentsConfig, args)
    command = command_line(
        f"{PROGRAM} experiments", config, experiments, extra=[f"--runs {args.runs}"]
    )
    result = run_fusion_experiments(config, experiments, Path(args.runs), command)
    best = result.report["best"]
    print(f"run folder: {result.run_dir}")
    print(f"report:     {result.run_dir / 'report.md'}")
    print(
        f"best setting: clinical share {best['clinical_share']}, F-beta with beta {best['beta']:g}"
    )
    for row in (*result.report["clinical"], *result.report["balancing"][1:]):
        print(
            f"  {row['setting']}: "
            + ", ".join(
                f"{key} {row[key]['mean']:.3f} ± {row[key]['std']:.3f}"
                for key in ("roc_auc", "balanced_accuracy", "precision", "recall")
            )
        )
    print(f"total time: {result.report['timings_s']['total_s']:.0f} s")
    return 0


def command_dermoscopy(args: argparse.Namespace) -> int:
    """The dermoscopy paper's experiments on HAM10000; publishes the 3-block network."""
    config = model_from_args(DermoscopyConfig, args)
    store = None if args.no_publish else Path(args.store)
    extra = [f"--runs {args.runs}", "--no-publish" if store is None else f"--store {store}"]
    command = command_line(f"{PROGRAM} dermoscopy", config, extra=extra)
    result = run_dermoscopy(config, Path(args.runs), store, command)
    print(f"run folder: {result.run_dir}")
    print(f"report:     {result.run_dir / 'report.md'}")
    if result.published is not None:
        print(f"published:  {result.published}")
    for network in result.report["split_networks"]:
        test = network["test_at_0.5"]
        print(
            f"  {network['name']}: test ROC AUC {test['roc_auc']:.3f}, accuracy "
            f"{test['accuracy']:.3f}, sensitivity {test['recall']:.3f}, specificity "
            f"{test['specificity']:.3f}, precision {test['precision']:.3f} (at 0.5)"
        )
    print(f"total time: {result.report['timings_s']['total_s']:.0f} s")
    return 0


def command_dermoscopy_lite0(args: argparse.Namespace) -> int:
    """EfficientNet-Lite0 against a published dermoscopy network, on that network's split."""
    config = model_from_args(DermoscopyConfig, args)
    command = command_line(
        f"{PROGRAM} dermoscopy-lite0",
        config,
        extra=[f"--reference {shlex.quote(args.reference)}", f"--runs {args.runs}"],
    )
    result = compare_backbone(config, Path(args.reference), Path(args.runs), command)
    print(f"run folder: {result.run_dir}")
    print(f"report:     {result.run_dir / 'report.md'}")
    for network in result.report["split_networks"]:
        test = network["test_at_0.5"]
        print(
            f"  {network['name']}: test ROC AUC {test['roc_auc']:.3f}, sensitivity "
            f"{test['recall']:.3f}, specificity {test['specificity']:.3f} (at 0.5)"
        )
    print(f"total time: {result.report['timings_s']['total_s']:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)

    # No abbreviated options: `--clinical-share` must not pass for `--clinical-shares`.
    experiments = commands.add_parser(
        "experiments",
        allow_abbrev=False,
        help="the fusion paper's tables and t-SNE figures (clinical-share sweep with F-beta "
        "selection, with vs without clinical data, balancing) on PAD-UFES-20",
    )
    add_config_options(experiments, TrainConfig, exclude=FIXED_BY_EXPERIMENTS)
    add_config_options(experiments, FusionExperimentsConfig)
    add_run_options(experiments, publishes=False)
    experiments.set_defaults(handler=command_experiments)

    dermoscopy = commands.add_parser(
        "dermoscopy",
        allow_abbrev=False,
        help="the dermoscopy paper's network on HAM10000 (split, layer sweep, Lite0, "
        "cross-validation); exports and publishes it as an image-only model",
    )
    add_config_options(dermoscopy, DermoscopyConfig)
    add_run_options(dermoscopy)
    dermoscopy.set_defaults(handler=command_dermoscopy)

    lite0 = commands.add_parser(
        "dermoscopy-lite0",
        allow_abbrev=False,
        help="EfficientNet-Lite0 (cached or full fine-tuning) against a published "
        "skinscreen-dermoscopy version, on the split that version was trained on",
    )
    add_config_options(
        lite0,
        DermoscopyConfig,
        exclude=set(DermoscopyConfig.model_fields) - set(LITE0_COMPARISON_OPTIONS),
    )
    lite0.add_argument(
        "--reference",
        required=True,
        help="a published skinscreen-dermoscopy version folder (card.json and model.onnx), "
        "e.g. models/skinscreen-dermoscopy/20261122.083414",
    )
    add_run_options(lite0, publishes=False)
    lite0.set_defaults(handler=command_dermoscopy_lite0)

    model_selection.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, PROGRAM)


if __name__ == "__main__":
    sys.exit(main())
