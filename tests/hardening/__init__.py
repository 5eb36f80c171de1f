"""The hardening tests, as a package so that their conftest.py has a module name of its own
(``hardening.conftest``) beside the suite's ``conftest``."""
