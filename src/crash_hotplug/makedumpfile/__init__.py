"""Byte formats makedumpfile writes: kdump-compressed (``diskdump_mod.h``), its bitmaps and page
descriptors, the flattened stream (``makedumpfile.h``) and the page codecs.

Only layout and bounds live here; which pages a dump should hold is the audit's business.
"""
