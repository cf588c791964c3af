"""The artifact store: published model versions addressed by URI, on any fsspec file system.

`MODEL_STORE` is a local folder by default (`models`, `/var/lib/skinscreen/models`)
or a URI such as `s3://bucket/models` (install `skinscreen-runtime[s3]`). A
version is the folder `<store>/<name>/<version>/` holding `model.onnx` and
`card.json`; it is never written twice, and its sha256 is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from skinscreen.core.card import (
    CARD_FILE,
    MODEL_FILE,
    ModelCard,
    ModelIntegrityError,
    file_sha256,
    publish,
    verified_model,
)


class ArtifactNotFoundError(FileNotFoundError):
    """No published version at a URI; the message names it."""


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


class ArtifactStore:
    """One store root; every version in it has the URI `<root URI>/<name>/<version>`."""

    def __init__(self, root: str | Path) -> None:
        self.fs, self.base = fsspec.core.url_to_fs(str(root))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root_uri = str(self.fs.unstrip_protocol(self.base))

    def uri(self, name: str, version: str) -> str:
        return str(self.fs.unstrip_protocol(_join(self.base, name, version)))

    def names(self) -> list[str]:
        """Model names with at least one published version."""
        if not self.fs.isdir(self.base):
            return []
        names = (Path(str(entry).rstrip("/")).name for entry in self.fs.ls(self.base, detail=False))
        return sorted(name for name in names if self.versions(name))

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first (versions sort by their time stamp)."""
        folder = _join(self.base, name)
        if not self.fs.isdir(folder):
            return []
        found = [
            Path(str(entry).rstrip("/")).name
            for entry in self.fs.ls(folder, detail=False)
            if self.fs.isfile(_join(str(entry), CARD_FILE))
        ]
        return sorted(found)

    def publish(self, model_file: Path, card: ModelCard) -> str:
        """Publish a model and its card; refuse to write over a published version."""
        if self.local:
            publish(Path(self.base), model_file, card)
            return self.uri(card.name, card.version)
        if card.sha256 != file_sha256(model_file):
            raise ModelIntegrityError(f"{model_file} does not match the sha256 in its card")
        folder = _join(self.base, card.name, card.version)
        if self.fs.exists(_join(folder, CARD_FILE)):
            raise FileExistsError(
                f"model {card.name} version {card.version} is already published at "
                f"{self.uri(card.name, card.version)}; published versions are immutable"
            )
        # Object stores cannot rename a folder atomically: the card goes last and marks the
        # version complete; readers (`versions`, `read_card`) ignore a folder without one.
        self.fs.put_file(str(model_file), _join(folder, MODEL_FILE))
        with self.fs.open(_join(folder, CARD_FILE), "w") as handle:
            handle.write(card.model_dump_json(indent=2) + "\n")
        return self.uri(card.name, card.version)


def read_card(uri: str) -> ModelCard:
    """The card of the published version at `uri`."""
    fs, path = fsspec.core.url_to_fs(uri)
    card_path = _join(path, CARD_FILE)
    if not fs.isfile(card_path):
        raise ArtifactNotFoundError(
            f"no published model at {uri}: {CARD_FILE} is missing; a version folder holds "
            f"{MODEL_FILE} and {CARD_FILE}"
        )
    with fs.open(card_path, "r") as handle:
        return ModelCard.model_validate(json.load(handle))


def fetch_model(uri: str, sha256: str) -> tuple[bytes, ModelCard]:
    """The ONNX bytes and card at `uri`, after checking the bytes against `sha256` and the card.

    `sha256` is what the registry recorded when the version was registered: a
    file changed after that is refused even if someone rewrote its card too.
    """
    card = read_card(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    model_path = _join(path, MODEL_FILE)
    if not fs.isfile(model_path):
        raise ArtifactNotFoundError(f"no {MODEL_FILE} at {uri}")
    with fs.open(model_path, "rb") as handle:
        data = handle.read()
    actual = hashlib.sha256(data).hexdigest()
    for expected, source in ((sha256, "the registry"), (card.sha256, "its card")):
        if actual != expected:
            raise ModelIntegrityError(
                f"{MODEL_FILE} at {uri} has sha256 {actual}, but {source} says {expected}: "
                "the file was changed or damaged after publishing; refused"
            )
    return data, card


def import_published(store: ArtifactStore, source: Path) -> list[str]:
    """Publish into `store` every version under `source` (a local store) that it lacks.

    How the models shipped with the project reach the artifact store the
    services read; each one's sha256 is checked on the way.
    """
    copied = []
    for card_path in sorted(source.glob(f"*/*/{CARD_FILE}")):
        folder = card_path.parent
        name, version = folder.parent.name, folder.name
        if version in store.versions(name):
            continue
        model_path, card = verified_model(folder)
        copied.append(store.publish(model_path, card))
    return copied
