"""``python -m bridge.cli``: the command line (it lives in :mod:`bridge.frontends.cli`)."""

from bridge.frontends.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
