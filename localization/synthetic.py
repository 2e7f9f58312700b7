"""``python -m localization.synthetic --out DIR [--seed N] [--videos N] [--format F]``: see localization.data.synthetic."""

from localization import cli
from localization.data.synthetic import main

if __name__ == "__main__":
    cli.run(main)
