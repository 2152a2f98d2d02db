"""Code shared by the ingest and AI worker functions: the call domain, its ports and adapters."""
