"""The operational layer around both APIs: metrics in Prometheus' format, health, admission
limits, CORS and the bearer token (``install`` puts them on an app)."""

from pyengine.server.ops.install import OpsSettings, install_ops

__all__ = ["OpsSettings", "install_ops"]
