"""Plumbing for adapter authors, taking each backend's specifics as arguments.

A support module never imports an adapter.
"""
