-- dead_letters: one final row per rejected record.
CREATE OR REPLACE VIEW dead_letters AS
SELECT
    source,
    reason,
    error,
    payload,
    received_at
FROM dead_letters_data FINAL
