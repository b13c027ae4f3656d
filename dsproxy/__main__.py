from __future__ import annotations

import sys

from dsproxy.cli import main

sys.exit(main())
