-- One row per rejected record, identified by its source; a replay writes the identical row.
-- payload holds the raw record bytes as they arrived (not necessarily UTF-8).
CREATE TABLE IF NOT EXISTS dead_letters_data
(
    source String,
    reason String,
    error String,
    payload String,
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY source
