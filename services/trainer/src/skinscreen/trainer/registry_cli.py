"""`skinscreen-trainer models ...` and `runs submit`: the registry and the queue from a shell.

For operators: list versions, promote or roll back (checked like the API's,
announced to inference workers), and enqueue a training run (the CronJob of
scheduled retraining). They read DATABASE_URL and REDIS_URL from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError
from redis import Redis

from skinscreen.runtime import registry, training_runs
from skinscreen.runtime.database import create_pool
from skinscreen.runtime.queue import make_celery
from skinscreen.runtime.settings import SharedSettings

T = TypeVar("T")


class OperatorError(ValueError):
    """Something an operator must fix (settings, a config file); the message says what."""


def _whoami() -> str:
    # getpass.getuser() fails in containers whose user id has no name.
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "cli"


def _settings() -> SharedSettings:
    try:
        return SharedSettings()  # DATABASE_URL and REDIS_URL come from the environment
    except ValidationError as error:
        missing = ", ".join(str(problem["loc"][0]) for problem in error.errors())
        raise OperatorError(
            f"set {missing} in the environment: the registry is in PostgreSQL (DATABASE_URL) "
            "and workers are told of switches through Redis (REDIS_URL)"
        ) from None


def _with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def run() -> T:
        pool = await create_pool(_settings().DATABASE_URL, max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def _metric(version: registry.ModelVersion, name: str) -> str:
    value = version.metric(name)
    return "-" if value is None else f"{value:.3f}"


def command_list(args: argparse.Namespace) -> int:
    versions = _with_pool(lambda pool: registry.list_versions(pool, args.name))
    if args.json:
        print(json.dumps([
            {**{key: getattr(v, key) for key in ("name", "version", "status", "artifact_uri",
             "sha256", "promoted_by")}, "cross_validation": v.card.get("cross_validation")}
            for v in versions
        ], indent=2))  # fmt: skip
        return 0
    if not versions:
        print("no registered versions" + (f" of {args.name}" if args.name else ""))
        return 0
    print(f"{'name':<22} {'version':<18} {'status':<10} {'recall':>7} {'BACC':>7} {'AUC':>7}  "
          "promoted by")  # fmt: skip
    for v in versions:
        print(
            f"{v.name:<22} {v.version:<18} {v.status:<10} {_metric(v, 'recall'):>7} "
            f"{_metric(v, 'balanced_accuracy'):>7} {_metric(v, 'roc_auc'):>7}  "
            f"{v.promoted_by or ''}"
        )
    return 0


def _announce(version: registry.ModelVersion) -> None:
    client = Redis.from_url(_settings().REDIS_URL)
    try:
        client.publish(registry.ACTIVATIONS_CHANNEL, registry.activation_message(version))
    finally:
        client.close()


def command_promote(args: argparse.Namespace) -> int:
    active = _with_pool(
        lambda pool: registry.promote(
            pool, args.name, args.version, actor=args.requested_by, reason=args.reason
        )
    )
    _announce(active)
    print(f"{active.name} {active.version} is active")
    return 0


def command_rollback(args: argparse.Namespace) -> int:
    active = _with_pool(
        lambda pool: registry.rollback(pool, args.name, actor=args.requested_by, reason=args.reason)
    )
    _announce(active)
    print(f"rolled back: {active.name} {active.version} is active")
    return 0


def command_submit(args: argparse.Namespace) -> int:
    """Enqueue a training run, validated exactly as POST /v1/training-runs validates it."""
    settings = _settings()
    values: dict[str, Any] = {}
    if args.config is not None:
        path = Path(args.config)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise OperatorError(f"--config {path}: {error}") from None
    try:
        request = training_runs.parse_training_request(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}" for problem in error.errors()
        )
        raise OperatorError(f"--config: invalid training request: {problems}") from None
    missing = training_runs.data_source_problems(request, settings.TRAINING_DATA_DIR)
    if missing:
        raise OperatorError("; ".join(f"data_sources[{i}]: {msg}" for i, msg in missing))
    celery = make_celery(
        "skinscreen-trainer-cli", settings.REDIS_URL, settings.CELERY_VISIBILITY_TIMEOUT_S
    )
    try:
        run_id = _with_pool(
            lambda pool: training_runs.create_run(pool, celery, request, args.requested_by)
        )
    finally:
        celery.close()
    print(f"training run {run_id} queued")
    return 0


def add_registry_commands(commands: Any) -> None:
    """Add `models` and `runs` to the trainer's command line."""
    models = commands.add_parser("models", help="the model registry: list, promote, rollback")
    actions = models.add_subparsers(dest="action", required=True)
    default_name = SharedSettings.model_fields["MODEL_NAME"].default

    listing = actions.add_parser("list", help="registered versions, newest first")
    listing.add_argument("--name", help="only this model (default: every model)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=command_list)

    for action, handler, help_text in (
        ("promote", command_promote, "make a version active (its sha256 is checked first)"),
        ("rollback", command_rollback, "re-activate the version active before the current one"),
    ):
        parser = actions.add_parser(action, help=help_text)
        if action == "promote":
            parser.add_argument("version", help="the version to activate")
        parser.add_argument("--name", default=default_name, help=f"model (default {default_name})")
        parser.add_argument("--reason", required=True, help="why; kept in the history")
        parser.add_argument("--requested-by", default=_whoami(), help="who asks")
        parser.set_defaults(handler=handler)

    runs = commands.add_parser("runs", help="training runs carried out by the trainer worker")
    run_actions = runs.add_subparsers(dest="action", required=True)
    submit = run_actions.add_parser("submit", help="enqueue a training run")
    submit.add_argument(
        "--config", help="JSON file with the fields of POST /v1/training-runs (default: all "
        "defaults, the shipped model's configuration)"
    )  # fmt: skip
    submit.add_argument("--requested-by", default=_whoami(), help="who asks")
    submit.set_defaults(handler=command_submit)
