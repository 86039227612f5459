"""The lab around the product: what runs the pipeline reproducibly and measures it.

``harness/`` (experiments, load, samplers, ceilings, reports), ``reliability/`` (fault-scenario
results and their report), ``checker`` (the views recomputed from the truth), ``backends`` (the
tests' Kafka and Redis as containers) and ``demo`` (``csp demo``). It imports the product
(``cryptostream``); the product never imports it (``tests/unit/test_package_boundary.py``).
Its ``csp`` subcommands come in through the ``cryptostream.commands`` entry point
(:func:`cryptostream_lab.commands.register`); its third-party dependencies are the ``harness``
extra.
"""
