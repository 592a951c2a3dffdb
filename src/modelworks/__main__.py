"""`python -m modelworks` is `mw`."""

from modelworks.cli import main

main()
