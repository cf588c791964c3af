-- Several served models: each screening names the model it was sent to, and a model
-- without clinical input (skinscreen-dermoscopy) may be sent a photo alone.

-- Every earlier screening went to the only model there was; the default also keeps
-- gateways of the previous release working during a rolling upgrade.
ALTER TABLE screenings ADD COLUMN model_name text NOT NULL DEFAULT 'skinscreen-fusion';

ALTER TABLE screenings ALTER COLUMN clinical DROP NOT NULL;

-- GET /v1/screenings?model=<name>, newest first, a page at a time.
CREATE INDEX screenings_model_created_at_id ON screenings (model_name, created_at DESC, id DESC);
