-- Erasure (DELETE /v1/screenings/{id}): the photo and the clinical answers go, and the
-- diagnosis with its patient id; a tombstone row stays (id, clinic, model, status, result,
-- times) for the audit trail and the batch statistics. All in skinscreen.runtime.screenings.
ALTER TABLE screenings ADD COLUMN erased_at timestamptz;
ALTER TABLE screenings ALTER COLUMN image_key DROP NOT NULL;
ALTER TABLE screenings ADD CONSTRAINT screenings_erased_leave_nothing
    CHECK (erased_at IS NULL OR (clinical IS NULL AND image_key IS NULL));
ALTER TABLE screenings ADD CONSTRAINT screenings_photo_until_erased
    CHECK (erased_at IS NOT NULL OR image_key IS NOT NULL);
