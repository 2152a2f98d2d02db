"""The ingest function: the HTTP API in front of the call store and the work queue."""
