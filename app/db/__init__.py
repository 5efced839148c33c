"""Database tables, engine and sessions, and the queries the API and workers run."""
