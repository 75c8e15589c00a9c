"""The dashboard: a local web page served by the daemon under /dashboard/ (see docs/dashboard.md)."""
