"""`python -m services.apikeys create | revoke | list`: manage the API keys in API_KEYS_FILE (CONTRACT.md)."""
