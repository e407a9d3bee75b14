"""Switchboard: contact-center voice agent backend (CLI, configuration and process wiring)."""

__version__ = "0.1.0"
