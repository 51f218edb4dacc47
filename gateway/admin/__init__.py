"""The admin API on its own port: JSON routes under ``/api`` (token), ``/metrics``, ``/healthz``, the judge."""

from gateway.admin.app import make_app, start_admin

__all__ = ["make_app", "start_admin"]
