"""The flattened device tree (``Documentation/devicetree/booting-without-of.rst``, ``scripts/dtc/libfdt``).

:mod:`~crash_hotplug.fdt.blob` holds the header and the in-place editing libfdt does (the kernel's
crash hotplug rewrites the crash kernel's FDT with it); :mod:`~crash_hotplug.fdt.tree` reads a blob
into nodes and properties and writes one back.
"""
