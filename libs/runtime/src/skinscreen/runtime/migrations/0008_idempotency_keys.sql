-- Safe retries: a client may send POST /v1/screenings with an Idempotency-Key header; a
-- request repeated with the same key (a lost answer, a timeout) gets the screening the first
-- one created instead of a second screening. The key lives with its screening: it is freed only
-- when the screening is deleted (which the gateway does when the queue refused its task).

-- The client's key; null for a screening submitted without one (any number of those).
ALTER TABLE screenings ADD COLUMN idempotency_key text
    CHECK (idempotency_key ~ '^[A-Za-z0-9._:-]{1,128}$');
-- sha256 of what the request asked for (clinical answers, model, photo bytes): a key sent
-- again with another request is refused, not answered with this screening.
ALTER TABLE screenings ADD COLUMN request_sha256 text;
ALTER TABLE screenings ADD CONSTRAINT screenings_idempotency_request
    CHECK ((idempotency_key IS NULL) = (request_sha256 IS NULL));

-- One screening per key, however many requests carrying it arrive at once (UNIQUE allows any
-- number of nulls).
ALTER TABLE screenings ADD CONSTRAINT screenings_idempotency_key_key UNIQUE (idempotency_key);
