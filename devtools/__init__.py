"""Developer tools, never shipped: the local stack, the demo and a terminal subscriber.

``processes`` (child processes, free ports) <- ``devstack`` (RabbitMQ, Soketi, the MongoDB
stand-in); ``marketplace`` (the seed data and event stream the demo, the bench and the tests
share); ``watch`` (a Pusher subscriber); ``demo`` (``python -m devtools demo``) uses them all.
They sit on top of the runtime and import it (``worker``, ``handlers``, ``schemas``);
nothing in those packages imports them.
"""
