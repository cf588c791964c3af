-- Screenings, their results, and the inference batches that produced them.

CREATE TABLE inference_batches (
    id            bigserial PRIMARY KEY,
    size          integer NOT NULL CHECK (size > 0),
    -- Results this batch wrote; fewer than size when a redelivered task was already done.
    written       integer NOT NULL CHECK (written >= 0),
    model_version text NOT NULL,
    provider      text NOT NULL,
    inference_ms  double precision NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE screenings (
    id                 uuid PRIMARY KEY,
    status             text NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'running', 'done', 'failed')),
    clinical           jsonb NOT NULL,
    image_key          text NOT NULL,
    image_format       text NOT NULL,
    image_bytes        integer NOT NULL,
    image_sha256       text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    completed_at       timestamptz,
    -- Deliveries of the task to a worker; above 1 after a retry or a worker crash.
    attempts           integer NOT NULL DEFAULT 0,
    cancer_probability double precision,
    suspicious         boolean,
    threshold          double precision,
    model_version      text,
    batch_id           bigint REFERENCES inference_batches (id),
    failure_reason     text,
    CHECK (status <> 'done' OR (cancer_probability IS NOT NULL AND model_version IS NOT NULL)),
    CHECK (status <> 'failed' OR failure_reason IS NOT NULL)
);

-- Newest first, with the id breaking ties: the order of cursor pagination.
CREATE INDEX screenings_created_at_id ON screenings (created_at DESC, id DESC);
