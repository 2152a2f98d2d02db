"""The AI worker (SQS work queue). Placeholder until the worker issue."""
