"""The ``ulm`` command line: a thin layer over the library; no numerics here."""
