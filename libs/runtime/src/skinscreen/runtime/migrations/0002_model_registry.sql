-- The model registry: every published version, which one serves, and the history of switches.

CREATE TABLE model_versions (
    name            text NOT NULL,
    version         text NOT NULL,
    -- Where the version's folder (model.onnx + card.json) lives: file://, s3://, ...
    artifact_uri    text NOT NULL,
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    card            jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'candidate'
                    CHECK (status IN ('candidate', 'active', 'retired')),
    training_run_id uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    promoted_by     text,
    promoted_at     timestamptz,
    PRIMARY KEY (name, version),
    CHECK (status = 'candidate' OR (promoted_by IS NOT NULL AND promoted_at IS NOT NULL))
);

-- One active version per model name, enforced here rather than trusted to every writer.
CREATE UNIQUE INDEX model_versions_one_active ON model_versions (name) WHERE status = 'active';

-- Each switch of the active version, in order: what rollback undoes and what audits read.
CREATE TABLE model_activations (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL,
    version          text NOT NULL,
    previous_version text,
    action           text NOT NULL CHECK (action IN ('promote', 'rollback')),
    actor            text NOT NULL,
    reason           text NOT NULL,
    activated_at     timestamptz NOT NULL,
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
);

CREATE INDEX model_activations_name_id ON model_activations (name, id DESC);
