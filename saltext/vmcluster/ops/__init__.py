"""Journaled cluster operations."""
