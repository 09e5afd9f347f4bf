"""PyTorch side of the SPM training-step benchmark (see models/clip/examples/bench_spm_step.rs):
the same in-world shape (transformers' CLIPModel, 64 wide, 2 layers, 4 heads, 32x32 images in
8x8 patches, exact GELU) with the step-aware adaLN modules of tests/fixtures/clip/make_fixtures.py,
16 pairs at per-image timesteps, two-way cross-entropy, backward, AdamW, on BENCH_THREADS threads.

    $HOME/.cache/spo-pipe/fixtures-venv/bin/python models/clip/bench/spm_step.py [pairs] [steps]
"""

import os
import sys
import time

import torch
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../tests/fixtures/clip"))
from make_fixtures import Spm  # noqa: E402

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
pairs, steps = ([int(a) for a in sys.argv[1:]] + [16, 20][len(sys.argv) - 1:])[:2]
VOCAB, CONTEXT = 128, 16
torch.manual_seed(0)
text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CONTEXT, hidden_act="gelu",
            layer_norm_eps=1e-5, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=0)
vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_channels=3, image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5)
clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))
spm = Spm(clip).train()
opt = torch.optim.AdamW(spm.parameters(), lr=1e-3)
n = 2 * pairs
times = []
for step in range(steps + 1):
    pixels = torch.randn(n, 3, 32, 32)
    ids = torch.zeros(n, CONTEXT, dtype=torch.long)
    ids[:, 0] = VOCAB - 2
    ids[:, 1:11] = torch.randint(1, VOCAB - 2, (n, 10))
    ids[:, 11] = VOCAB - 1
    t = torch.randint(0, 1000, (n,))
    start = time.perf_counter()
    img = spm.image_features(pixels, t)
    txt = clip.get_text_features(input_ids=ids)
    if not isinstance(txt, torch.Tensor):
        txt = txt.pooler_output
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    logits = clip.logit_scale.exp() * (img * txt).sum(-1)
    both = torch.stack([logits[:pairs], logits[pairs:]], 1)
    loss = -torch.log_softmax(both, -1)[:, 0].mean()
    loss.item()
    forward = time.perf_counter() - start
    opt.zero_grad()
    loss.backward()
    backward = time.perf_counter() - start - forward
    opt.step()
    total = time.perf_counter() - start
    if step > 0:
        times.append((total, forward, backward, total - forward - backward))


def median(i):
    v = sorted(x[i] for x in times)
    return 1e3 * v[len(v) // 2]


params = sum(p.numel() for p in spm.parameters())
low = 1e3 * min(x[0] for x in times)
print(f"torch {torch.__version__} SPM train step: params {params}, {pairs} pairs of 32x32 images, "
      f"threads {torch.get_num_threads()}: median {median(0):.2f} ms (forward {median(1):.2f}, "
      f"backward {median(2):.2f}, optimizer {median(3):.2f}), min {low:.2f} ms over {steps} steps")
