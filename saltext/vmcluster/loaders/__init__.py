"""Packages mapped onto the top-level _modules/, _states/ ... folders (see setup.cfg)."""
