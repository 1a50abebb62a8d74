"""Reading DICOM headers: one file becomes an importable Instance or a Rejection with its reason."""
