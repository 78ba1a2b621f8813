"""``python -m escn_plugin.finetune``: see :mod:`escn_plugin.finetune.cli`."""

import sys

from escn_plugin.finetune.cli import main

sys.exit(main())
