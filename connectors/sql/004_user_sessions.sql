-- user_sessions: one final row per session.
CREATE OR REPLACE VIEW user_sessions AS
SELECT
    user_id,
    session_start,
    session_end,
    events,
    page_views,
    purchases,
    CAST(CAST(revenue_cents AS Decimal(38, 2)) / 100 AS Decimal(18, 2)) AS revenue,
    entry_page,
    exit_page
FROM user_sessions_data FINAL
