"""`python -m jikimi_host.cli`: the `jikimi` command."""

import sys

from jikimi_host.cli import main

sys.exit(main())
