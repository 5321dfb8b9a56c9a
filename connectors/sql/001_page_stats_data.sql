-- One row per (page, window_start, part): a page's counts in one tumbling window from one
-- source partition. A replay writes the identical row again; a row with a higher version
-- (more events counted) wins over a partial one. Not partitioned by time: event times may
-- span centuries, and an insert touching more than max_partitions_per_insert_block
-- partitions would be rejected. Money is integer cents; the view makes it Decimal(18, 2).
CREATE TABLE IF NOT EXISTS page_stats_data
(
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    page String,
    part String,
    views UInt64,
    clicks UInt64,
    add_to_carts UInt64,
    purchases UInt64,
    revenue_cents Int64,
    unique_users UInt64,
    version UInt64,
    -- when the row was stored: how fresh results are (bench.latency reads it)
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (page, window_start, part)
