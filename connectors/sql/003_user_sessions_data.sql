-- One row per (user_id, session_start); the highest version (the fullest session) wins.
-- Money is integer cents; the view makes it Decimal(18, 2).
CREATE TABLE IF NOT EXISTS user_sessions_data
(
    user_id String,
    session_start DateTime64(3, 'UTC'),
    session_end DateTime64(3, 'UTC'),
    events UInt64,
    page_views UInt64,
    purchases UInt64,
    revenue_cents Int64,
    entry_page String,
    exit_page String,
    version UInt64,
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (user_id, session_start)
