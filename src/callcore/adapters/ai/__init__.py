"""AI providers, one module each, behind callcore.ports.AIProvider."""
