"""skinscreen inference: a Celery worker that batches screenings into ONNX Runtime calls."""
