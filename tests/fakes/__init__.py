"""Test doubles that run as real loopback servers (see provider.py)."""
