#!/usr/bin/env python3
"""open_clip's side of the spo-clip CPU benchmark (see examples/bench_clip.rs).

ViT-B-32 with random weights (pretrained=None), fp32, torch.inference_mode, the same batch and
repeats; reports the median images/s of the image tower and of scoring 512×512 PIL images
(open_clip's own preprocess + both towers + cosine).

    python models/clip/bench/open_clip_bench.py [batch] [repeats]
"""

import statistics
import sys
import time

import numpy as np
import open_clip
import torch
from PIL import Image

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 16
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.manual_seed(0)
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
model.eval()
tokenizer = open_clip.get_tokenizer("ViT-B-32")
pixels = torch.randn(batch, 3, 224, 224)
x, y = np.meshgrid(np.arange(512), np.arange(512))
images = [
    Image.fromarray(np.stack([(x + i) % 256, y % 256, (x ^ y) % 256], -1).astype(np.uint8))
    for i in range(batch)
]
prompts = ["a photo of an astronaut riding a horse on the moon"] * batch


def score():
    px = torch.stack([preprocess(im) for im in images])
    img = model.encode_image(px)
    txt = model.encode_text(tokenizer(prompts))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (model.logit_scale.exp() * (img * txt).sum(-1)).tolist()


with torch.inference_mode():
    model.encode_image(pixels)
    tower = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.encode_image(pixels)
        tower.append(batch / (time.perf_counter() - t))
    score()
    whole = []
    for _ in range(repeats):
        t = time.perf_counter()
        score()
        whole.append(batch / (time.perf_counter() - t))
print(
    f"open_clip {open_clip.__version__} torch {torch.__version__} threads {torch.get_num_threads()}, "
    f"ViT-B-32 random weights, batch {batch}, {repeats} repeats (median): "
    f"image tower {statistics.median(tower):.1f} images/s; "
    f"score from 512x512 RGB (preprocess + both towers) {statistics.median(whole):.1f} images/s"
)
