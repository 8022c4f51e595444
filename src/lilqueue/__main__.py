"""``python -m lilqueue``: the same as the ``lilqueue`` command."""

from lilqueue.cli import main

if __name__ == "__main__":
    main()
