"""``python -m registry.cli``: the ``registry`` command."""

from registry.cli import main

if __name__ == "__main__":
    main()
