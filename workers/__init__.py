"""Celery workers: the app (broker from the settings) and thin tasks around plain functions."""
