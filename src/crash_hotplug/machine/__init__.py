"""The machine model: CPU masks and hotplug states, the iomem resource tree, memory blocks,
DIMMs, notifier chains and memory bytes (``kernel/cpu.c``, ``kernel/resource.c``,
``drivers/base/memory.c``)."""
