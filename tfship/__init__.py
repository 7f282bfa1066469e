"""The ``tfship`` command: dispatches to exporter/, serving/ and client/.

It is a package of its own, beside the three parts of the design card, because the one console script
sits above all of them (serving imports exporter, exporter imports client) and must start without
importing any of their heavy dependencies: ``python -m tfship`` / ``tfship --help`` stay fast.
"""
