"""The AI worker function and the dead-letter queue handler."""
