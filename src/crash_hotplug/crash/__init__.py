"""Kernel crash code: the elfcorehdr builder (``kernel/crash_core.c``), the x86_64 arch part
(``arch/x86/kernel/crash.c``), the generic hotplug handler, panic and capture (``fs/proc/vmcore.c``)."""
