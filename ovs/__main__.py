import sys

from .cli import main

# The guard matters: `ovs eval --workers N` starts worker processes with the "spawn" method,
# which imports this module again in each worker (as __mp_main__).
if __name__ == "__main__":
    sys.exit(main())
