"""`python -m gateway` is the `modelgw` command."""

from gateway.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
