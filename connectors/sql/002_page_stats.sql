-- page_stats: one final row per (page, window_start), summing the source partitions.
CREATE OR REPLACE VIEW page_stats AS
SELECT
    window_start,
    window_end,
    page,
    sum(views) AS views,
    sum(clicks) AS clicks,
    sum(add_to_carts) AS add_to_carts,
    sum(purchases) AS purchases,
    CAST(CAST(sum(revenue_cents) AS Decimal(38, 2)) / 100 AS Decimal(18, 2)) AS revenue,
    sum(unique_users) AS unique_users
FROM page_stats_data FINAL
GROUP BY window_start, window_end, page
