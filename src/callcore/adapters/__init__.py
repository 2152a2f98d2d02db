"""Adapters: the AWS implementations of the ports."""
