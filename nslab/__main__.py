"""`python -m nslab ...`: the same command line as `nslab ...`."""
from .cli import main

if __name__ == "__main__":
    main()
