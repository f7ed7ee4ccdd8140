"""Thin Prefect flows over the ``tnb`` library. Importing this package configures
Prefect for tnb first (analytics off, local home): see :mod:`flows._env`.

A checkout imports this directory as ``flows``; a wheel installs it as ``tnb.flows``
(``pyproject.toml``), so its modules import one another relatively.
"""

from . import _env as _env  # noqa: F401  (must run before prefect is imported)

_env.quiet_user_errors()
