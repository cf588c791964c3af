-- The audit trail: one row per action taken through the API (who, what, when, which request).
-- All statements on it live in skinscreen.runtime.audit. `details` never holds health data
-- (no clinical answers, results, diagnoses or patient ids): ids, names, counts only.
CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- The API key that acted, and its clinic (NULL: an operator key of no clinic).
    key_id     uuid REFERENCES api_keys (id),
    clinic_id  uuid REFERENCES clinics (id),
    action     text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    -- What it acted on: a screening id, a model 'name@version', a key or clinic id, a run id.
    subject    text,
    request_id text,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_events_clinic ON audit_events (clinic_id, id DESC);
CREATE INDEX audit_events_action ON audit_events (action, id DESC);

-- Append-only. REVOKE UPDATE, DELETE cannot bind the table's owner (the role the services and
-- migrations run as), so a trigger refuses both, and TRUNCATE, for every role; only dropping
-- the trigger, a deliberate schema change, lifts it.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
