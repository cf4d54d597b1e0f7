"""The Celery adapter: app configuration, thin tasks, a dispatcher for the coordinator, local worker processes."""
