"""`python -m ferrule_plugin build <dir>`: see `ferrule_plugin.build`."""

import sys

from .build import main

sys.exit(main())
