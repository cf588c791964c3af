-- Rate limits per API key (the gateway's skinscreen.gateway.ratelimit, counted in Redis), set
-- per clinic by operators (PATCH /v1/clinics/{id}). NULL: the gateway's defaults
-- (RATE_LIMIT_SCREENINGS, RATE_LIMIT_READS). A limit is '<requests>/<second|minute|hour|day>';
-- the same pattern is checked by the API (skinscreen.runtime.accounts.RATE_LIMIT_PATTERN).
ALTER TABLE clinics
    ADD COLUMN rate_limit_screenings text
        CHECK (rate_limit_screenings ~ '^[1-9][0-9]{0,8}/(second|minute|hour|day)$'),
    ADD COLUMN rate_limit_reads text
        CHECK (rate_limit_reads ~ '^[1-9][0-9]{0,8}/(second|minute|hour|day)$');
