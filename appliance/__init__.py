"""Appliance: an air-gapped edge appliance runtime."""

__version__ = "0.1.0"
