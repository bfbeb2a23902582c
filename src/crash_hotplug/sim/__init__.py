"""Resize storms: a discrete-event simulation in which the mechanism's own code runs on a virtual
clock, with every step priced by a cost model whose numbers carry their sources."""
