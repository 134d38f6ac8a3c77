"""Optional dependencies: imported where they are used, never when microstream is, and a missing one is an error
that says which extra installs it (`pip install 'microstream[pandas]'`).

| extra | packages | for |
|---|---|---|
| `pandas` | pandas | `Pipeline.from_pandas`, `Collect.to_pandas`, pandas Timestamps in time columns |
| `mqtt` | paho-mqtt | `read_mqtt`, `ms.sinks.mqtt`, the MQTT broker helpers |
| `microvm` | qemu.qmp | the microVM host backend (`backend="microvm"`) |
| `placement` | scipy | HiGHS for placement: the exact solver, large-neighbourhood search, infeasibility proofs |
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MicrostreamError

EXTRAS = {"pandas": "pandas", "paho": "mqtt", "paho.mqtt": "mqtt", "paho.mqtt.client": "mqtt",
          "paho.mqtt.publish": "mqtt", "qemu": "microvm", "qemu.qmp": "microvm", "qemu.qmp.legacy": "microvm",
          "scipy": "placement", "scipy.optimize": "placement", "scipy.sparse": "placement"}
_PACKAGES = {"pandas": "pandas", "mqtt": "paho-mqtt", "microvm": "qemu.qmp", "placement": "scipy"}


class MissingDependency(MicrostreamError, ImportError):
    """An optional dependency a feature needs is not installed; the message names the extra that installs it."""


def require(module: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or raise `MissingDependency` naming the extra to install.

    >>> require("numpy", "arrays").__name__
    'numpy'
    >>> require("pandas_but_not_installed", "a test")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    microstream.core.optional.MissingDependency: a test needs the Python package 'pandas_but_not_installed', which ...
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and not module.startswith(exc.name) and exc.name != module:
            raise  # the module is there but one of its own imports failed: show that
        extra = EXTRAS.get(module)
        how = (f": pip install 'microstream[{extra}]' (or pip install {_PACKAGES[extra]})" if extra else "")
        raise MissingDependency(f"{feature} needs the Python package '{module}', which is not installed{how}") \
            from None
