"""The worker as a module for Faust's own command line.

    ITMGUARD_BUNDLE=... faust -A worker.faustapp worker

Settings come from ITMGUARD_* environment variables only; `itmguard worker`
is the same app with flags too.
"""

from __future__ import annotations

import os

from worker.config import Settings
from worker.logs import configure_logging
from worker.runtime import build_app

settings = Settings.from_env(os.environ)
configure_logging(settings.log_level)
app = build_app(settings)
