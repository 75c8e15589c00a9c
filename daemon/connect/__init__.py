"""Wiring clients to the companion: Continue's config file, shell variables, the Cursor tunnel."""
