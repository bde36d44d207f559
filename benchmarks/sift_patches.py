"""How many SIFT keypoints the public patches of cross mode have, at the resolutions a patch
filter could count them: the InstaHide Challenge keeps patches with more than 40 keypoints, and
docs/privacy.md compares that with our pool's filter (whole 64x64 images).

    python benchmarks/sift_patches.py [--images 1000]

For each of the first N Tiny-ImageNet validation images (64x64): one random 32x32 patch
counted at 32x32 and upscaled (bicubic) to 64x64, one random 32x32 patch of the image scaled to
40x40 (the pool's size), one random 51x51 window counted at the source's resolution (the area a
32x32 patch of the 40x40 image covers: what `PublicPool.from_patches` filters), and the whole
image; prints the median count and the fraction above 40.
"""

import argparse

import numpy as np
from PIL import Image

from instahide.datasets import default_data_dir
from instahide.pool import PublicPool, sift_keypoints

WINDOW = 51  # 32 * 64 / 40: a 32x32 patch of the pool's 40x40 image, at the 64x64 source's resolution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="Tiny-ImageNet images (1 to 10100)")
    parser.add_argument("--seed", type=int, default=0, help="the patches' positions")
    args = parser.parse_args()
    if not 1 <= args.images <= 10_100:
        parser.error(f"--images {args.images}: must be 1 to 10100")
    pool = PublicPool.from_tar(default_data_dir() / "tiny-imagenet-val.tar", short_side=None, limit=args.images,
                               progress=False)
    rng = np.random.default_rng(args.seed)
    counts: dict[str, list[int]] = {"32x32 patch of a 64x64 image, counted at 32x32": [],
                                    "the same patch upscaled to 64x64": [],
                                    "32x32 patch of the image scaled to 40x40": [],
                                    f"{WINDOW}x{WINDOW} window of the 64x64 image, counted at 64x64": [],
                                    "the whole 64x64 image": []}
    for i in range(len(pool)):
        image = pool.image(i)
        y, x = rng.integers(0, image.shape[0] - 31), rng.integers(0, image.shape[1] - 31)
        patch = np.ascontiguousarray(image[y:y + 32, x:x + 32])
        small = np.asarray(Image.fromarray(image).resize((40, 40), Image.Resampling.BOX))
        sy, sx = rng.integers(0, 9), rng.integers(0, 9)
        upscaled = np.asarray(Image.fromarray(patch).resize((64, 64), Image.Resampling.BICUBIC))
        wy, wx = rng.integers(0, image.shape[0] - WINDOW + 1), rng.integers(0, image.shape[1] - WINDOW + 1)
        window = np.ascontiguousarray(image[wy:wy + WINDOW, wx:wx + WINDOW])
        views = (patch, upscaled, np.ascontiguousarray(small[sy:sy + 32, sx:sx + 32]), window, image)
        for name, view in zip(counts, views, strict=True):
            counts[name].append(sift_keypoints(view))
    for name, values in counts.items():
        values_array = np.array(values)
        print(f"{name}: median {np.median(values_array):.0f} keypoints, {np.mean(values_array > 40):.1%} above 40 "
              f"({len(values_array)} images)")


if __name__ == "__main__":
    main()
