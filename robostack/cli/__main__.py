"""``python -m robostack.cli``."""
import sys

from robostack.cli import main

sys.exit(main())
