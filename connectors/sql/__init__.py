"""The pipeline's own ClickHouse DDL, one statement per `NNN_name.sql` file, applied in name
order after the DDL a pipeline's tables derive (`waxhouse.engine`): the dead letters.

Physical `*_data` tables hold rows with their identity and version; views with the
names users query turn them into final, deduplicated results for a plain `SELECT`.
"""
