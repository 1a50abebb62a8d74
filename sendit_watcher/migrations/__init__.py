"""Versioned SQL migrations, shipped as package data and applied in file-name order."""
