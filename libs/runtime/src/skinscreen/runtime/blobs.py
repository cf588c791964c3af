"""The blob store for original uploads: a local folder, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from uuid import UUID


class BlobStore:
    """Keys look like `ab/<uuid>.jpg`: two-character fan-out keeps folders small."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def key_for(self, screening_id: UUID, extension: str) -> str:
        name = str(screening_id)
        return f"{name[:2]}/{name}.{extension}"

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        """Write the blob under a temporary name and rename it, so no reader sees half a file."""
        destination = self.path(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".upload-", dir=destination.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(staging, destination)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
