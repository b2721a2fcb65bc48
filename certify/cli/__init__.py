"""The ``certify`` command line: one module per command family, registered in ``main.COMMANDS``."""
