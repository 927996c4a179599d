"""Configs, profiles, the params schema and the entry points (train, test, the DVC stage driver)."""
