"""tfship: export Keras models to signed SavedModel, TFLite and ONNX, serve them, validate what is served.

This package holds the ``tfship`` command (``cli.py`` and one ``cli_*.py`` module per area) and the shared
core (``tfship.core``). The design card's folders ``exporter/``, ``serving/`` and ``client/`` install beside
them as ``tfship.exporter``, ``tfship.serving`` and ``tfship.client``.
"""
