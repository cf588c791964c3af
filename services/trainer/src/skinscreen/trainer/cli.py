"""Command line of the trainer: train, evaluate, export, publish, the papers' experiments; models.

Thin over the library: it parses arguments, validates them through
`TrainConfig`, and calls into the package. Bad input ends with exit code 2
and a message naming the option, what was wrong and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import typing
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from skinscreen.core.card import ModelIntegrityError, publish, read_card, verified_model
from skinscreen.core.decision import MELANOMA_INDEX, DecisionRule
from skinscreen.core.pad_ufes import DIAGNOSES, DataError, load_pad_ufes
from skinscreen.trainer.config import TrainConfig
from skinscreen.trainer.dermoscopy_backbone import (
    LITE0_COMPARISON_OPTIONS,
    compare_backbone,
)
from skinscreen.trainer.dermoscopy_experiments import DermoscopyConfig, run_dermoscopy
from skinscreen.trainer.evaluation import flag_metrics
from skinscreen.trainer.export import ExportError, export_onnx, parity_rows
from skinscreen.trainer.fusion_experiments import (
    FIXED_BY_EXPERIMENTS,
    FusionExperimentsConfig,
    run_fusion_experiments,
)
from skinscreen.trainer.model import load_checkpoint
from skinscreen.trainer.registry_cli import add_registry_commands
from skinscreen.trainer.training import load_images

log = logging.getLogger("skinscreen.trainer")

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class UsageError(Exception):
    """Bad input from the command line; the message is for the user."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel] = TrainConfig,
    exclude: Collection[str] = (),
) -> None:
    """One option per field of `model` (TrainConfig by default) but those in `exclude`;
    pydantic validates the strings afterwards."""
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        choices = None
        if typing.get_origin(info.annotation) is typing.Literal:
            choices = typing.get_args(info.annotation)
        default = "required" if info.is_required() else f"default {_shown(info.default)}"
        help_text = f"{info.description + ' ' if info.description else ''}({default})"
        if name == "report_betas":
            help_text = "comma-separated betas of the F-beta scores to report " + f"({default})"
        elif _is_list(info):
            help_text = f"{info.description} Comma-separated. ({default})"
        parser.add_argument(
            _option(name), dest=name, choices=choices, help=help_text, required=info.is_required()
        )


def _is_list(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) is tuple


def _shown(value: object) -> str:
    """A value as the command line takes it."""
    if isinstance(value, tuple):
        return ",".join(_shown(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return model_from_args(TrainConfig, args)


def model_from_args(model: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """Validate the options of `model`'s fields that were given; the rest keep their defaults."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        values[name] = value.split(",") if _is_list(info) else value
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise UsageError(_describe(error)) from None


def command_line(command: str, *configs: BaseModel, extra: Sequence[str] = ()) -> str:
    """The shell command that repeats a run: every setting that is not at its default."""
    parts = [f"skinscreen-trainer {command}"]
    for config in configs:
        for name, info in type(config).model_fields.items():
            value = getattr(config, name)
            if info.is_required() or value != info.default:
                parts.append(f"{_option(name)} {shlex.quote(_shown(value))}")
    parts += extra
    return " \\\n    ".join(parts)


def _describe(error: ValidationError) -> str:
    lines = ["invalid training configuration:"]
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        option = _option(location) if location else "configuration"
        given = problem.get("input")
        shown = f" (given {given!r})" if location and not isinstance(given, dict) else ""
        lines.append(f"  {option}: {problem['msg']}{shown}")
    return "\n".join(lines)


def command_train(args: argparse.Namespace) -> int:
    from skinscreen.trainer.pipeline import run_training

    config = config_from_args(args)
    store = None if args.no_publish else Path(args.store)
    result = run_training(config, Path(args.runs), store)
    print(f"run folder: {result.run_dir}")
    print(f"report:     {result.run_dir / 'report.md'}")
    if result.published is not None:
        print(f"published:  {result.published}")
    metrics, flagged = result.estimates.metrics, result.estimates.flagged_by_diagnosis
    print(
        "nested cross-validation (95 % patient bootstrap intervals): "
        + ", ".join(
            f"{key} {metrics[key].value:.3f} ({metrics[key].low:.3f}-{metrics[key].high:.3f})"
            for key in ("roc_auc", "recall", "specificity", "balanced_accuracy")
        )
    )
    print(
        "called suspicious, by diagnosis: "
        + ", ".join(f"{key} {value.value:.3f}" for key, value in flagged.items())
    )
    melanoma = "none" if result.rule.melanoma is None else f"{result.rule.melanoma:.4f}"
    print(f"thresholds: cancer {result.rule.cancer:.4f}, melanoma {melanoma}")
    print(f"total time: {result.timings['total_s']:.0f} s")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    """Score a published model on a PAD-UFES-20 folder through ONNX Runtime."""
    model_path, card = verified_model(Path(args.model))
    dataset = load_pad_ufes(Path(args.data))
    if dataset.fingerprint() == card.data_fingerprint:
        print(
            "warning: this is the data the model was trained on; these numbers are not an "
            "estimate of its accuracy (see the cross-validated metrics in its card)",
            file=sys.stderr,
        )
    images = load_images(dataset, card.input_size).numpy()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    clinical = dataset.clinical
    batches = [
        session.run(
            list(card.outputs),
            {"image": images[start : start + 64], "clinical": clinical[start : start + 64]},
        )
        for start in range(0, len(images), 64)
    ]
    probabilities = np.concatenate([batch[0] for batch in batches])
    diagnoses = np.concatenate([batch[1] for batch in batches]) if card.has_diagnoses else None
    rule = DecisionRule.from_card(card)
    flagged = rule.suspicious(
        probabilities, None if diagnoses is None else diagnoses[:, MELANOMA_INDEX]
    )
    metrics = flag_metrics(
        dataset.labels, probabilities, flagged, tuple(float(beta) for beta in args.betas.split(","))
    )
    by_diagnosis = {
        diagnosis: {
            "photos": int(rows.sum()),
            "called_suspicious": int(flagged[rows].sum()),
        }
        for index, diagnosis in enumerate(DIAGNOSES)
        if (rows := dataset.diagnosis_indices == index).any()
    }
    print(
        json.dumps(
            {
                "model": f"{card.name}/{card.version}",
                "photos": len(dataset),
                "threshold": rule.cancer_threshold,
                "melanoma_threshold": rule.melanoma_threshold,
                "metrics": metrics,
                "by_diagnosis": by_diagnosis,
            },
            indent=2,
        )
    )
    return 0


def command_export(args: argparse.Namespace) -> int:
    """Re-export a run's checkpoint to ONNX, checked against PyTorch on real photos."""
    model, _ = load_checkpoint(Path(args.checkpoint))
    dataset = load_pad_ufes(Path(args.data))
    subset = dataset.subset(parity_rows(len(dataset)))
    images = load_images(subset, model.spec.image_size).numpy()
    difference = export_onnx(model, Path(args.output), images, subset.clinical)
    print(f"wrote {args.output}; max |ONNX Runtime - PyTorch| = {difference:.1e}")
    return 0


def command_publish(args: argparse.Namespace) -> int:
    """Publish a run folder's model.onnx and card.json into a store."""
    run_dir = Path(args.run)
    card = read_card(run_dir)
    destination = publish(Path(args.store), run_dir / "model.onnx", card)
    print(f"published {card.name} {card.version} at {destination}")
    return 0


def command_experiments(args: argparse.Namespace) -> int:
    """The fusion paper's tables and t-SNE figures on PAD-UFES-20."""
    config = config_from_args(args)
    experiments = model_from_args(FusionExperimentsConfig, args)
    command = command_line("experiments", config, experiments, extra=[f"--runs {args.runs}"])
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
    command = command_line("dermoscopy", config, extra=extra)
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
        "dermoscopy-lite0",
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
    parser = argparse.ArgumentParser(prog="skinscreen-trainer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="cross-validate, fit, export and publish a model")
    _add_config_options(train)
    train.add_argument("--runs", default="runs", help="folder for run folders (default runs)")
    train.add_argument(
        "--store", default="var/models", help="model store to publish into (default var/models)"
    )
    train.add_argument("--no-publish", action="store_true", help="do not publish the model")
    train.set_defaults(handler=command_train)

    evaluate = commands.add_parser("evaluate", help="score a published model on a data folder")
    evaluate.add_argument(
        "--model", required=True, help="published folder <store>/<name>/<version>"
    )
    evaluate.add_argument("--data", required=True, help="PAD-UFES-20 folder")
    evaluate.add_argument("--betas", default="1,3,5,7,10", help="F-beta scores to report")
    evaluate.set_defaults(handler=command_evaluate)

    export = commands.add_parser("export", help="export a checkpoint to ONNX, checked")
    export.add_argument("--checkpoint", required=True, help="checkpoint.pt of a run")
    export.add_argument("--data", required=True, help="PAD-UFES-20 folder for the parity check")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.set_defaults(handler=command_export)

    publish_parser = commands.add_parser("publish", help="publish a run folder into a store")
    publish_parser.add_argument(
        "--run", required=True, help="run folder with model.onnx, card.json"
    )
    publish_parser.add_argument("--store", default="var/models", help="model store")
    publish_parser.set_defaults(handler=command_publish)

    # No abbreviated options: `--clinical-share` must not pass for `--clinical-shares`.
    experiments = commands.add_parser(
        "experiments",
        allow_abbrev=False,
        help="the fusion paper's tables and t-SNE figures (clinical-share sweep with F-beta "
        "selection, with vs without clinical data, balancing) on PAD-UFES-20",
    )
    _add_config_options(experiments, exclude=FIXED_BY_EXPERIMENTS)
    _add_config_options(experiments, FusionExperimentsConfig)
    experiments.add_argument("--runs", default="runs", help="folder for run folders (default runs)")
    experiments.set_defaults(handler=command_experiments)

    dermoscopy = commands.add_parser(
        "dermoscopy",
        allow_abbrev=False,
        help="the dermoscopy paper's network on HAM10000 (split, layer sweep, Lite0, "
        "cross-validation); exports and publishes it as an image-only model",
    )
    _add_config_options(dermoscopy, DermoscopyConfig)
    dermoscopy.add_argument("--runs", default="runs", help="folder for run folders (default runs)")
    dermoscopy.add_argument(
        "--store", default="var/models", help="model store to publish into (default var/models)"
    )
    dermoscopy.add_argument("--no-publish", action="store_true", help="do not publish the model")
    dermoscopy.set_defaults(handler=command_dermoscopy)

    lite0 = commands.add_parser(
        "dermoscopy-lite0",
        allow_abbrev=False,
        help="EfficientNet-Lite0 (cached or full fine-tuning) against a published "
        "skinscreen-dermoscopy version, on the split that version was trained on",
    )
    _add_config_options(
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
    lite0.add_argument("--runs", default="runs", help="folder for run folders (default runs)")
    lite0.set_defaults(handler=command_dermoscopy_lite0)

    add_registry_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (
        UsageError,
        DataError,
        ExportError,
        ModelIntegrityError,
        OSError,
        ValueError,
    ) as error:
        print(f"skinscreen-trainer {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
