"""``python -m stjobs.train``: see :mod:`stjobs.train.run`."""

from stjobs.train.run import main

if __name__ == "__main__":
    raise SystemExit(main())
