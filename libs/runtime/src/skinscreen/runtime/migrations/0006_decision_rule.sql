-- The decision rule: a screening is suspicious when its cancer probability reaches the
-- model's cancer threshold (the existing `threshold` column), or its melanoma probability
-- reaches the model's melanoma threshold (models that output the six diagnoses).

ALTER TABLE screenings
    -- The rules that fired: 'cancer_probability', 'melanoma_probability'; empty when the
    -- screening is not suspicious.
    ADD COLUMN reasons text[]
        CHECK (reasons <@ ARRAY['cancer_probability', 'melanoma_probability']::text[]),
    -- {"ACK": p, "BCC": p, "MEL": p, "NEV": p, "SCC": p, "SEK": p} from the model's
    -- diagnosis_probabilities output; NULL for a model without it.
    ADD COLUMN diagnosis_probabilities jsonb
        CHECK (diagnosis_probabilities IS NULL
               OR jsonb_typeof(diagnosis_probabilities) = 'object'),
    -- The melanoma threshold the result was decided with; NULL for a model without one.
    ADD COLUMN melanoma_threshold double precision;

-- Results written before this migration were decided by the cancer threshold alone.
-- (A worker of the previous release, during a rolling upgrade, still writes none; the
-- gateway reads a NULL `reasons` the same way.)
UPDATE screenings
SET reasons = CASE WHEN suspicious THEN ARRAY['cancer_probability'] ELSE ARRAY[]::text[] END
WHERE status = 'done' AND reasons IS NULL;
