"""`python -m clinipipe` runs the command-line tool."""

from clinipipe.cli.app import main

main()
