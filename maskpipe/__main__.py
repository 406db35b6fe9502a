"""`python -m maskpipe` runs the command line."""

from maskpipe.cli import main

raise SystemExit(main())
