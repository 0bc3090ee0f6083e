"""`python -m cnncli` (also what `torchrun -m cnncli` launches)."""

from cnncli.cli import main

if __name__ == "__main__":
    main()
