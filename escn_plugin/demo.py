"""``python -m escn_plugin.demo``: kept for existing commands; the main job lives in
:mod:`escn_plugin.cli.demo`."""

from escn_plugin.cli.demo import main, run_demo  # noqa: F401

if __name__ == "__main__":
    main()
