"""`python -m harness`: the `harness` command."""

from harness.cli import main

if __name__ == "__main__":  # not when a spawned process re-imports the main module
    main()
