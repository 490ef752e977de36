"""Fieldline."""
