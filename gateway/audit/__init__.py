"""The audit log: one row per exchange in ClickHouse (embedded chDB or a server).

record.py (the row), settings.py (AuditSettings), schema.py (DDL, migrations, retention),
store.py (AuditStore), spool.py (the on-disk spool), writer.py (AuditWriter: batching, spool,
replay), queries.py (reads for the CLI). Import from the modules; this package imports nothing,
so the request path can import `record` without loading the ClickHouse client.
"""
