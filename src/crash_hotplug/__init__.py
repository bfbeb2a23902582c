"""crash_hotplug: Linux kdump crash hotplug, modelled to the byte.

Layers, bottom up: ``elf`` (byte formats) -> ``machine`` and ``snapshot`` (machine state)
-> ``crash.core``/``crash.x86_64`` (header builder) and ``kexec`` (kdump image, purgatory)
-> ``crash.hotplug`` (handlers), ``legacy``, ``crash.vmcore`` -> ``audit``, ``sim``, ``lab``, ``cli``.
A lower layer never imports a higher one.
"""

__version__ = "0.1.0"
