"""The ``tfship`` command: dispatches to exporter/, serving/ and client/."""
