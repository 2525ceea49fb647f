"""docs/photos_restored.png: a group photo with small faces, its FFHQ-aligned LR crops, the restored photo.

The photo is synthetic (held-out UTKFace faces on a textured background, benchmarks/photo_scenes.py);
the faces are aligned as ``make-manifest --align ffhq`` does, super-resolved with the bundled
generator in this process (``pulse_ray.upsample``) and pasted back as ``paste-back`` does.

    python scripts/photos_figure.py --steps 60 --restarts 2 --out docs/photos_restored.png
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from photo_scenes import held_out_faces, make_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--scale", type=int, default=4, help="--photos-scale of the restored photo")
    ap.add_argument("--align-scale", type=float, default=0.6)
    ap.add_argument("--out", default="docs/photos_restored.png")
    args = ap.parse_args()
    import pulse_ray
    from pulse_ray.photos.align import align_photo
    from pulse_ray.photos.paste import restore_photo

    g = pulse_ray.load_generator(device="cpu")
    lr_size = g.resolution // 4
    faces = held_out_faces(args.faces, skip=200)
    scene = make_scene(faces, np.random.default_rng(3), size=(360, 200), eye_range=(11.0, 16.0), angle_range=15.0)
    photo = Image.fromarray(scene.photo)
    found = align_photo(photo, lr_size=lr_size, scale=args.align_scale)
    lrs = [np.asarray(Image.open(io.BytesIO(f["image"])).convert("RGB")) for f in found]
    batch = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).float() / 255
    results = pulse_ray.upsample(batch, g, restarts=args.restarts, steps=args.steps)
    srs = [(r.image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for r in results]
    quads = [np.asarray(f["quad"]).reshape(4, 2) for f in found]
    restored = restore_photo(photo, list(zip(srs, quads)), args.scale)

    s = args.scale
    w, h = photo.size
    pad, label = 8, 18
    crop_side = (h * s - (len(lrs) - 1) * pad) // max(len(lrs), 1)
    canvas = Image.new("RGB", (w * s + crop_side + w * s + 4 * pad, h * s + label + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(photo.resize((w * s, h * s), Image.Resampling.NEAREST), (pad, label + pad))
    draw.text((pad, 3), f"photo ({w}x{h}, shown {s}x)", fill="black")
    x = 2 * pad + w * s
    draw.text((x, 3), f"LR {lr_size}px", fill="black")
    for k, lr in enumerate(lrs):
        canvas.paste(Image.fromarray(lr).resize((crop_side, crop_side), Image.Resampling.NEAREST),
                     (x, label + pad + k * (crop_side + pad)))
    x += crop_side + pad
    canvas.paste(restored, (x, label + pad))
    draw.text((x, 3), f"restored (--photos-scale {s})", fill="black")
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}: {len(lrs)} faces, {Path(args.out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
