"""The gradlift HTTP service: settings, database, storage, API routes and the command line."""
