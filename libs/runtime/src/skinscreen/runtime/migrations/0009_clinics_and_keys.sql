-- Clinic accounts: every request carries an API key; a clinic sees only its own screenings.
-- All statements on these tables live in skinscreen.runtime.accounts; the screenings filter by
-- clinic in skinscreen.runtime.screenings.

-- A tenant: a clinic, hospital or health post whose clinicians screen patients.
CREATE TABLE clinics (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- API keys, sent as `Authorization: Bearer <key>`. A key is a long random secret
-- ('sk_live_' + 43 URL-safe characters, 256 bits) shown once, when it is created; only its
-- SHA-256 is kept (a slow hash buys nothing against 256 random bits, and the lookup on every
-- request stays one index probe). `prefix` (the first 12 characters) identifies a key in lists.
-- Scopes: 'clinician' (screen, read its clinic's screenings, record their diagnoses) needs a
-- clinic; 'operator' (models, training runs, clinics and keys; reads every clinic's
-- screenings) may belong to an operators' clinic or to none (the first key, made by
-- skinscreen-gateway-admin).
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    clinic_id    uuid REFERENCES clinics (id),
    name         text CHECK (length(name) BETWEEN 1 AND 200),
    scopes       text[] NOT NULL
                 CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['clinician', 'operator']),
    prefix       text NOT NULL,
    key_sha256   bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    -- Refreshed at most once a minute per key (skinscreen.runtime.accounts.AUTHENTICATE).
    last_used_at timestamptz,
    CHECK (clinic_id IS NOT NULL OR NOT ('clinician' = ANY (scopes)))
);

CREATE INDEX api_keys_clinic ON api_keys (clinic_id, created_at);

-- The clinic whose key submitted the screening. NULL for screenings made before clinic
-- accounts existed (this migration): those belong to no clinic and are visible to operators
-- only. Every screening submitted from now on has one (only clinician keys screen).
ALTER TABLE screenings ADD COLUMN clinic_id uuid REFERENCES clinics (id);

-- A clinic's list, newest first: the order of cursor pagination, within one clinic.
CREATE INDEX screenings_clinic_created_at_id ON screenings (clinic_id, created_at DESC, id DESC);

-- Idempotency keys are the client's: one clinic's key must neither collide with another's
-- nor reveal that it exists, so they are unique per clinic now. (Screenings without a key, and
-- those made before accounts, whose keys were unique already, are not constrained: NULLs are
-- distinct.)
ALTER TABLE screenings DROP CONSTRAINT screenings_idempotency_key_key;
ALTER TABLE screenings ADD CONSTRAINT screenings_clinic_idempotency_key
    UNIQUE (clinic_id, idempotency_key);
