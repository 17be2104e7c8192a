"""Background jobs (Celery): soft-prompt mining and LoRA training, routed to their own queues."""
