"""Create DATABASE_URL's database if it is missing and migrate it to the newest schema (`make migrate`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.db import main

if __name__ == "__main__":
    main()
