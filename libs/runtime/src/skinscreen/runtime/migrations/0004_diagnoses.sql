-- Confirmed diagnoses of screened lesions: the labels that retraining learns from.

CREATE TABLE diagnoses (
    screening_id  uuid PRIMARY KEY REFERENCES screenings (id),
    diagnosis     text NOT NULL
                  CHECK (diagnosis IN ('ACK', 'BCC', 'MEL', 'NEV', 'SCC', 'SEK', 'OTHER')),
    confirmed_by  text NOT NULL CHECK (confirmed_by IN ('histopathology', 'clinical_consensus')),
    -- Who the patient is (a pseudonym), so splits keep one patient's lesions together.
    patient_id    text NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
