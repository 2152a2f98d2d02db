"""The local stack: moto server, resources from template.yaml, uvicorn, and SQS pollers."""
