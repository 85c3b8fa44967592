"""``python -m cadence explain|check module:function``: see ``cadence.cli``."""

from cadence.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
