"""``python -m ripplerec``: the ``ripplerec`` command line."""

from ripplerec.cli import main

if __name__ == "__main__":
    main()
