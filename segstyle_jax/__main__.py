import sys

from segstyle_jax.cli import main

sys.exit(main())
