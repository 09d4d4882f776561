"""``python -m pyro_bhpeft`` is the ``pyro-bhpeft`` command."""

import sys

from .cli import main

sys.exit(main())
