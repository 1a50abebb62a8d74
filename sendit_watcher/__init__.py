"""sendit-watcher: import finished DICOM folders from watched directories into PostgreSQL."""

__version__ = "1.2.0"
__all__ = ["__version__"]
