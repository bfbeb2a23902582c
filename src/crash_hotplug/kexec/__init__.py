"""kexec for kdump: the crash image (``struct kimage``) and its segments, their placement in the
crashkernel region, ``kexec_file_load`` and ``kexec_load`` (with the kexec-tools side), the
purgatory object and its SHA-256 digest, and the kexec lock (``kernel/kexec_core.c``,
``kernel/kexec_file.c``, ``kernel/kexec.c``, ``arch/x86/kernel/kexec-bzimage64.c``,
``arch/x86/purgatory/purgatory.c``)."""
