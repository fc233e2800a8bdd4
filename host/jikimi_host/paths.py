"""Where the checkout's parts are. The tools run from a checkout (an editable install)."""

from pathlib import Path

import jikimi

FIRMWARE_DIR = Path(jikimi.__file__).resolve().parent.parent
REPO_ROOT = FIRMWARE_DIR.parent
BOARDS_DIR = REPO_ROOT / "boards"
BUILD_DIR = REPO_ROOT / "build"
PROTOCOL_VECTORS = FIRMWARE_DIR / "protocol_vectors.json"
