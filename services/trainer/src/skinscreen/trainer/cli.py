"""Command line of the trainer: train (any served model's recipe), evaluate, export, publish;
the registry and the training queue (`models`, `runs`).

Thin over the library: it parses arguments, validates them through the
recipe's configuration, and calls into the package. Bad input ends with exit
code 2 and a message naming the option, what was wrong and what is allowed.
Heavy modules (torch, ONNX Runtime) are imported by the commands that use
them, so `skinscreen-trainer models list` starts in a moment. The papers'
experiments are `skinscreen-research`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from skinscreen.runtime.training_runs import FUSION_MODEL_NAME, REQUESTS
from skinscreen.trainer.cli_options import (
    add_config_options,
    add_run_options,
    model_from_args,
    run_command,
)
from skinscreen.trainer.registry_cli import add_registry_commands

PROGRAM = "skinscreen-trainer"


def train_parser(model: str, config_type: type) -> argparse.ArgumentParser:
    """`train`'s options for the recipe of `model`: its configuration's fields and where to."""
    parser = argparse.ArgumentParser(
        prog=f"{PROGRAM} train",
        description=f"Cross-validate, fit, export and publish {model} with its recipe.",
    )
    parser.add_argument(
        "--model",
        default=FUSION_MODEL_NAME,
        choices=list(REQUESTS),
        help=f"the model to make, which chooses the recipe (default {FUSION_MODEL_NAME}; "
        "`train --model NAME --help` lists that recipe's options)",
    )
    add_config_options(parser, config_type)
    add_run_options(parser)
    return parser


def command_train(args: argparse.Namespace) -> int:
    from skinscreen.trainer.recipes import get_recipe

    recipe = get_recipe(args.model)
    # The recipe's own options, parsed now that the recipe is known.
    options = train_parser(recipe.name, recipe.config_type).parse_args(
        ["--model", args.model, *args.options]
    )
    config = model_from_args(recipe.config_type, options)
    store = None if options.no_publish else Path(options.store)
    result = recipe.train(config, Path(options.runs), store)
    print(f"run folder: {result.run_dir}")
    report = "report.md" if (result.run_dir / "report.md").is_file() else "report.json"
    print(f"report:     {result.run_dir / report}")
    if result.published is not None:
        print(f"published:  {result.published}")
    for line in result.summary:
        print(line)
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    """Score a published model on a PAD-UFES-20 folder through ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

    from skinscreen.core.card import verified_model
    from skinscreen.core.decision import MELANOMA_INDEX, DecisionRule
    from skinscreen.core.pad_ufes import DIAGNOSES, load_pad_ufes
    from skinscreen.trainer.evaluation import flag_metrics
    from skinscreen.trainer.training import load_images

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
    from skinscreen.core.pad_ufes import load_pad_ufes
    from skinscreen.trainer.export import export_onnx, parity_rows
    from skinscreen.trainer.model import load_checkpoint
    from skinscreen.trainer.training import load_images

    model, _ = load_checkpoint(Path(args.checkpoint))
    dataset = load_pad_ufes(Path(args.data))
    subset = dataset.subset(parity_rows(len(dataset)))
    images = load_images(subset, model.spec.image_size).numpy()
    difference = export_onnx(model, Path(args.output), images, subset.clinical)
    print(f"wrote {args.output}; max |ONNX Runtime - PyTorch| = {difference:.1e}")
    return 0


def command_reexport(args: argparse.Namespace) -> int:
    """Export a published version's checkpoint again as a new version (no retraining)."""
    import tempfile

    import numpy as np

    from skinscreen.core.card import publish, read_card
    from skinscreen.core.pad_ufes import load_pad_ufes
    from skinscreen.trainer.export import REEXPORT_PHOTOS, reexport
    from skinscreen.trainer.training import load_images

    published = Path(args.published)
    dataset = load_pad_ufes(Path(args.data))
    rows = np.linspace(0, len(dataset) - 1, min(REEXPORT_PHOTOS, len(dataset))).astype(int)
    subset = dataset.subset(rows)
    size = read_card(published).input_size
    images = load_images(subset, size).numpy()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "model.onnx"
        card = reexport(
            Path(args.checkpoint), published, images, subset.clinical, output, args.reason
        )
        destination = publish(Path(args.store), output, card)
    assert card.derived_from is not None
    print(
        f"published {card.name} {card.version} at {destination}, derived from "
        f"{card.derived_from.version}; max |new - old| = {card.derived_from.max_difference:.1e}"
        f" over {len(images)} photos"
    )
    return 0


def command_publish(args: argparse.Namespace) -> int:
    """Publish a run folder's model.onnx and card.json into a store."""
    from skinscreen.core.card import publish, read_card

    run_dir = Path(args.run)
    card = read_card(run_dir)
    destination = publish(Path(args.store), run_dir / "model.onnx", card)
    print(f"published {card.name} {card.version} at {destination}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)

    # Its options depend on the recipe; `command_train` parses them once --model is known.
    train = commands.add_parser(
        "train",
        add_help=False,
        help="cross-validate, fit, export and publish a model with its recipe "
        f"(--model, default {FUSION_MODEL_NAME}; `train --help` lists the options)",
    )
    train.add_argument("--model", default=FUSION_MODEL_NAME)
    train.set_defaults(handler=command_train, passes_on_options=True)

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

    again = commands.add_parser(
        "reexport",
        help="export a published version's checkpoint again as a new version, checked to "
        "give the same outputs (no retraining)",
    )
    again.add_argument("--checkpoint", required=True, help="checkpoint.pt of the version's run")
    again.add_argument("--published", required=True, help="published folder <store>/<name>/<v>")
    again.add_argument("--data", required=True, help="PAD-UFES-20 folder: photos to compare on")
    again.add_argument("--store", default="var/models", help="model store to publish into")
    again.add_argument(
        "--reason",
        default="the same weights exported again with TF SAME padding folded into the "
        "convolutions (issue 17): a leaner, faster graph",
    )
    again.set_defaults(handler=command_reexport)

    publish_parser = commands.add_parser("publish", help="publish a run folder into a store")
    publish_parser.add_argument(
        "--run", required=True, help="run folder with model.onnx, card.json"
    )
    publish_parser.add_argument("--store", default="var/models", help="model store")
    publish_parser.set_defaults(handler=command_publish)

    add_registry_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, PROGRAM)


if __name__ == "__main__":
    sys.exit(main())
