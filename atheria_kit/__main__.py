import sys

from atheria_kit.cli import main

sys.exit(main())
