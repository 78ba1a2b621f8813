"""``python -m escn_plugin.check_data``: kept for existing commands; the tool lives in
:mod:`escn_plugin.cli.check_data`."""

from escn_plugin.cli.check_data import *  # noqa: F403
from escn_plugin.cli.check_data import main

if __name__ == "__main__":
    raise SystemExit(main())
