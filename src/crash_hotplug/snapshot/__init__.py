"""Machine state read from files at their Linux paths under a root: ``/`` on a live host, a
snapshot directory, or an extracted sosreport."""
