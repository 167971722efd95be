"""Storage: SQLAlchemy 2 async tables, the `Database` (engine and sessions), the SQL unit of work
that implements the domain's storage ports, and Alembic migrations for SQLite and PostgreSQL."""
