"""``python -m zarr_instances``: the command line (:mod:`zarr_instances.cli`)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
