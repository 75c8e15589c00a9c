"""Getting a request to a backend: routing by model id, forwarding with retries and fallback,
the model-list cache, and watching fine-tune jobs."""
