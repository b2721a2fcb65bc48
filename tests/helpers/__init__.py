"""Test helpers (no tests): random networks (``networks``), exact answers to compare engines
against (``oracles``) and VNN-LIB property builders (``properties``). Fixtures stay in conftest."""
