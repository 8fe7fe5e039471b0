"""`python -m prep --help`: see prep/cli.py."""

from prep.cli import main

raise SystemExit(main())
