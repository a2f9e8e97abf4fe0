import sys

from atheria_kit.bot.cli import main

sys.exit(main())
