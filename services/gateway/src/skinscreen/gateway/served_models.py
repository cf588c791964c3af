"""Which models screenings may name, and whether each needs the clinical answers.

A model is served when its name has an active version in the registry. A
name's inputs never change (the registry refuses a version with other
inputs), so once a name is known its answer is cached for the life of the
process: a screening costs no registry read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import asyncpg

from skinscreen.runtime import registry

# The registry's pattern of model names.
NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class ServedModel:
    name: str
    inputs: tuple[str, ...]

    @property
    def takes_clinical(self) -> bool:
        return "clinical" in self.inputs


class UnknownModelError(LookupError):
    """No active version of the name; the message lists the models that are served."""


class ServedModels:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._known: dict[str, ServedModel] = {}

    async def get(self, name: str) -> ServedModel:
        """The served model `name`, or UnknownModelError naming those that are served."""
        if name in self._known:
            return self._known[name]
        active = None
        if NAME_PATTERN.match(name):
            active = await registry.get_active(self.pool, name)
        if active is None:
            served = await self.pool.fetchval(
                "SELECT coalesce(string_agg(name, ', ' ORDER BY name), 'none')"
                " FROM model_versions WHERE status = 'active'"
            )
            raise UnknownModelError(f"no model named {name!r} is served; served models: {served}")
        # The registry's reading of a name's inputs (older cards lack the field).
        inputs = await registry.model_inputs(self.pool, name)
        assert inputs is not None, "an active version is a registered one"
        model = self._known[name] = ServedModel(name, inputs)
        return model
