"""The userspace path crash hotplug replaces: udev rules that unload and reload the whole kdump
image on every hotplug event (kdump-utils ``98-kexec.rules``, ``kdump-udev-throttler``, ``kdumpctl``)."""
