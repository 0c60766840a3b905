"""Training: one loop (``loop.fit``) used by fine-tuning and by every preparation."""
