"""`python -m obf ...` runs the `obf` command. It is also the entry for several processes:

    torchrun --nproc_per_node 4 -m obf train data/dataset --out data/model

The command line sits above the library: `obf.train` knows nothing of it. After the command, a
process group that training started under torchrun is torn down here.
"""

from __future__ import annotations

import sys

from obf.cli import main


def run() -> int:
    code = main()
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(run())
