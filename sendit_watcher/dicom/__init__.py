"""Reading DICOM headers: one file becomes an importable Instance or a Rejection with its reason.

The modules, bottom up; each imports only those above it in this list (and, from outside the package, only
the leaf modules errors, names, walk and outcomes), never one below it:

- ``tags``: the table of main tags (tag, column, kind), from which Instance, both readers' main-tag maps and the
  importer's staging columns are derived; the other tags and UIDs the readers look for.
- ``values``: the value rules: padding and multiple values, the character sets decoded here, what PostgreSQL can
  store, the size limits, and what each kind of main tag becomes as a column.
- ``elements``: decoding pydicom's raw elements without building DataElements; the VR classes; the rules both
  readers share for a private element's VR (from its creator) and for text in any character set.
- ``dicomjson``: a pydicom dataset as the DICOM JSON model.
- ``stream``: one file read forward in bounded chunks, values passed over unread or read on their own (lean's).
- ``lean``: the single-pass reader that needs no pydicom dataset; it answers only for an importable instance.
- ``headers``: ``read_instance``: the lean reader first, pydicom for everything it leaves; the rejections.
"""
