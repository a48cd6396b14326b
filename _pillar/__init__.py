"""Salt loader modules of vmcluster (Salt skips files starting with _)."""
