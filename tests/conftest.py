"""Shared pytest set-up."""

import logging

# Salt's log handlers flush after pytest has closed the captured streams; those
# "--- Logging error ---" reports at exit are noise, not failures.
logging.raiseExceptions = False
