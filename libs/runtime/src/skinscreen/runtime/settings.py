"""Settings every service must agree on (gateway, inference, trainer), read from the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .queue import DEFAULT_MODEL_NAME


class SharedSettings(BaseSettings):
    """The servers, folders and model both services use; each service's settings extend it.

    The two server URLs have no default on purpose.
    """

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    DATABASE_URL: str = Field(description="PostgreSQL URL (asyncpg form).")
    REDIS_URL: str = Field(description="Redis URL: the Celery broker and result backend.")
    BLOB_DIR: Path = Field(Path("var/blobs"), description="Where original uploads are kept.")
    MODEL_STORE: str = Field(
        "models",
        description="The artifact store of published models, <store>/<name>/<version>/: a "
        "folder, or an fsspec URI such as s3://bucket/models (skinscreen-runtime[s3]).",
    )
    MODEL_NAME: str = Field(
        DEFAULT_MODEL_NAME,
        description="The model whose active version serves: an inference worker's model, "
        "and the gateway's for screenings that name none.",
    )
    SHIPPED_MODELS: Path | None = Field(
        None,
        description="Published models shipped with the project (the repo's models/); the "
        "pre-start step copies those missing into MODEL_STORE and registers them.",
    )
    TRAINING_DATA_DIR: Path = Field(
        Path("data"),
        description="Where training data sources live, one folder each (e.g. pad-ufes-20/).",
    )
    METRICS_PORT: int = Field(
        9100,
        gt=0,
        lt=65536,
        description="Port of the service's Prometheus /metrics; the gateway's is apart from "
        "its API port.",
    )
    METRICS_HOST: str = Field(
        "127.0.0.1",
        description="Address /metrics listens on: loopback by default; 0.0.0.0 in Kubernetes, "
        "where the pod network reaches it and a NetworkPolicy lets only Prometheus in.",
    )
    CELERY_VISIBILITY_TIMEOUT_S: int = Field(
        300,
        gt=0,
        description="Seconds before Redis hands an unacknowledged task (its worker died) to "
        "another worker; longer than any batch can take.",
    )
