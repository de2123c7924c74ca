"""The database: SQLAlchemy 2 models, the async engine, Alembic migrations."""
