"""The call domain: no AWS, no HTTP."""
