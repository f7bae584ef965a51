"""Faust agents that wire profiles and models to Kafka and Redis (needs the ``worker`` extra).

Import :func:`ripplerec.streams.app.create_app` or run ``ripplerec worker``; this package root stays
light so that importing it does not start or configure anything.
"""

__all__: list[str] = []
