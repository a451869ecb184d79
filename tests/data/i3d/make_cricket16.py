"""Regenerate cricket16.npz (the first 16 frames of the kinetics-i3d sample clip) and print the I3D oracle.

Run from the repository root: python tests/data/i3d/make_cricket16.py [/path/to/v_CricketShot_g04_c01_rgb.gif]
"""

import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

from vdgen.i3d import kinetics400_labels, load_i3d

gif = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/videos/v_CricketShot_g04_c01_rgb.gif")
with av.open(str(gif)) as container:
    frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
print("decoded", frames.shape, frames.dtype)
out = Path(__file__).parent / "cricket16.npz"
np.savez_compressed(out, frames=frames[:16])
print("wrote", out, out.stat().st_size, "bytes")

model, labels = load_i3d(), kinetics400_labels()
for count in (16, len(frames)):
    x = torch.from_numpy(frames[:count]).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)[0].double()
    probs = logits.softmax(0)
    top = logits.argsort(descending=True)[:3]
    print(f"{count} frames ({time.perf_counter() - start:.1f} s):",
          [(labels[i], round(logits[i].item(), 4), round(probs[i].item(), 5)) for i in top])
