"""``python -m crash_hotplug``: the command line."""

from crash_hotplug.cli import main

main()
