"""Byte formats of ELF core files: headers, program headers, notes, x86_64 NT_PRSTATUS, VMCOREINFO.

Mirrors ``include/uapi/linux/elf.h`` and ``include/linux/elfcore.h``. Policy (which program
headers a kernel emits) lives in :mod:`crash_hotplug.crash`, not here.
"""
