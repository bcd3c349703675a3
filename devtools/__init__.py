"""Developer tools, never shipped: the local stack, the demo and a terminal subscriber.

They sit on top of the runtime and import it (``worker``, ``handlers``, ``schemas``);
nothing in those packages imports them.
"""
