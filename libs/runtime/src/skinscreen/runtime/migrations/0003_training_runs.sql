-- Training runs started through the API or the CLI, carried out by the trainer worker.

CREATE TABLE training_runs (
    id                uuid PRIMARY KEY,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    config            jsonb NOT NULL,
    requested_by      text NOT NULL,
    -- Where the run is: {"stage": ..., "fold": k, "folds": K, "epoch": e, "epochs": E}.
    progress          jsonb NOT NULL DEFAULT '{}'::jsonb,
    cancel_requested  boolean NOT NULL DEFAULT false,
    metrics           jsonb,
    model_name        text NOT NULL,
    candidate_version text,
    promoted          boolean,
    promotion_reason  text,
    failure_reason    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    -- The worker running it touches this while alive; a stale one means the worker died.
    heartbeat_at      timestamptz,
    CHECK (status <> 'failed' OR failure_reason IS NOT NULL),
    CHECK (status <> 'succeeded' OR candidate_version IS NOT NULL)
);

CREATE INDEX training_runs_created_at_id ON training_runs (created_at DESC, id DESC);
