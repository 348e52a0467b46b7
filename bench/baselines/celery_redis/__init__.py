"""The old Celery + Redis system, rebuilt small and faithful around imgpipe's own stage code (README.md)."""
