"""The artifact store on a local folder and on a non-local fsspec file system (memory://).

The memory file system runs the same code path as S3 (no atomic rename: the
card is written last), with the shipped model's real bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from skinscreen.core.card import MODEL_FILE, ModelIntegrityError, latest_version, verified_model
from skinscreen.runtime.artifacts import (
    ArtifactNotFoundError,
    ArtifactStore,
    fetch_model,
    import_published,
    read_card,
)
from tests.conftest import REPO

SHIPPED = latest_version(REPO / "models", "skinscreen-fusion")


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield ArtifactStore(tmp_path / "models")
        return
    root = f"memory://{tmp_path.name}/models"
    yield ArtifactStore(root)
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{tmp_path.name}"):
        memory.rm(f"/{tmp_path.name}", recursive=True)


def test_publish_read_and_fetch(store: ArtifactStore) -> None:
    model_path, card = verified_model(SHIPPED)
    uri = store.publish(model_path, card)
    assert uri == store.uri(card.name, card.version)
    assert store.names() == [card.name]
    assert store.versions(card.name) == [card.version]
    assert read_card(uri) == card
    data, fetched = fetch_model(uri, card.sha256)
    assert data == model_path.read_bytes()
    assert fetched == card


def test_published_versions_are_immutable(store: ArtifactStore) -> None:
    model_path, card = verified_model(SHIPPED)
    store.publish(model_path, card)
    with pytest.raises(FileExistsError, match="published versions are immutable"):
        store.publish(model_path, card)


def test_a_changed_artifact_is_refused(store: ArtifactStore) -> None:
    model_path, card = verified_model(SHIPPED)
    uri = store.publish(model_path, card)
    with pytest.raises(ModelIntegrityError, match="the registry says"):
        fetch_model(uri, "0" * 64)
    fs, path = fsspec.core.url_to_fs(uri)
    if store.local:
        Path(path, MODEL_FILE).chmod(0o644)  # published files are read-only
    fs.pipe_file(f"{path}/{MODEL_FILE}", b"damaged")
    with pytest.raises(ModelIntegrityError, match="changed or damaged after publishing"):
        fetch_model(uri, card.sha256)


def test_missing_versions_are_named(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError, match=r"no published model at .*skinscreen-fusion/1"):
        read_card(store.uri("skinscreen-fusion", "1"))
    assert store.versions("skinscreen-fusion") == []


def test_shipped_models_are_imported_once(store: ArtifactStore) -> None:
    first = import_published(store, REPO / "models")
    assert store.uri("skinscreen-fusion", SHIPPED.name) in first
    assert import_published(store, REPO / "models") == []
