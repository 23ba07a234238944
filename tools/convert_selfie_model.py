#!/usr/bin/env python
"""Fetch MediaPipe's selfie segmentation model from PyPI (or npm) and convert it; the same as
``segstyle fetch-models``. See :mod:`segstyle_jax.selfie_convert` for sources and checks."""

import sys

from segstyle_jax.selfie_convert import main

if __name__ == "__main__":
    sys.exit(main())
