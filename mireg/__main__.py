"""`python -m mireg` (used by `torchrun -m mireg`)."""

from mireg.cli import main

main()
