"""trainq: a training service for PyTorch jobs, with a Celery worker pool and a live dashboard."""

__version__ = "0.1.0"
