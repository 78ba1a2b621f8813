"""``python -m escn_plugin.convert``: kept for existing commands; the tool lives in
:mod:`escn_plugin.cli.convert`."""

from escn_plugin.cli.convert import *  # noqa: F403
from escn_plugin.cli.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
