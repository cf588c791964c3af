-- The reconciler: screenings left queued or running with no live task (broker data lost, a
-- crash between the row and the message) are queued again, a bounded number of times.

-- Times a reconciler queued this screening again; past its limit the screening fails.
ALTER TABLE screenings ADD COLUMN requeues integer NOT NULL DEFAULT 0 CHECK (requeues >= 0);

-- The reconciler's sweep reads only unfinished screenings, oldest activity first.
CREATE INDEX screenings_unfinished_updated_at ON screenings (updated_at)
    WHERE status IN ('queued', 'running');
