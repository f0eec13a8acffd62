"""`ilrm-data`: data source utilities.

    ilrm-data index re10k/train      # write index.json for a folder of *.torch chunks
    ilrm-data detect my_data         # print which source kind --data my_data would be read as

Bad input ends with one line on stderr (exit code 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import tyro

from ilrm_nerfstudio.core.errors import exit_on_error
from ilrm_nerfstudio.data.sources import build_chunk_index, detect_source

Folder = tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="FOLDER")]]


def index(folder: Folder) -> None:
    """Write index.json (scene key -> chunk file) for a folder of *.torch chunks.

    Args:
        folder: A folder of *.torch chunks, e.g. re10k/train.
    """
    print(build_chunk_index(folder))


def detect(folder: Folder) -> None:
    """Print which source kind --data would be read as.

    Args:
        folder: What --data would point at.
    """
    print(detect_source(folder))


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    tyro.extras.subcommand_cli_from_dict(
        {"index": index, "detect": detect}, prog="ilrm-data", description="Data source utilities.", args=argv
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
