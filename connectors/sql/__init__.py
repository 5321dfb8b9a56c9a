"""Idempotent ClickHouse DDL, one statement per `NNN_name.sql` file, applied in name order.

Physical `*_data` tables hold rows with their identity and version; views with the
contract's names turn them into final, deduplicated results for a plain `SELECT`.
"""
