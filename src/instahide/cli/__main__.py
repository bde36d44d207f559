"""`python -m instahide.cli`: the `instahide` command (as `python -m instahide`)."""

from . import main

raise SystemExit(main())
