"""Regenerates the small derived test data of vlp-objectives (run from the repo root with the
project venv: `.venv/bin/python vlp-objectives/tests/data/make_test_data.py`).

1. `<model>_<case>_buffers.safetensors`: tensors taken verbatim out of the fixture checkpoints
   (tests/fixtures/<model>/<case>/checkpoint.pth) that the objective tests need but that are not
   among the fixture inputs/outputs: the ITC queues, queue_ptr, temp, idx_queue, and the online and
   momentum copies of every `momentum_updated.<key>` probe. Nothing is computed here.
2. `torch_reference.safetensors`: draws of torch's global CPU generator after `torch.manual_seed`,
   in the order ALBEF.mask() makes them, and per-row `torch.multinomial` draws (the official loop),
   so the Rust sampler can be checked for the same random stream; plus BLIP LM per-sequence sums.
"""
import torch
import torch.nn.functional as F
from safetensors.torch import save_file, load_file

OUT = "vlp-objectives/tests/data"
CASES = [("albef", "pretrain_1"), ("albef", "pretrain_2"), ("albef", "retrieval_1"), ("blip", "pretrain_1")]

for model, case in CASES:
    d = f"tests/fixtures/{model}/{case}"
    sd = torch.load(f"{d}/checkpoint.pth", map_location="cpu", weights_only=False)["model"]
    outs = load_file(f"{d}/outputs.safetensors")
    keep = {}
    for k in ["image_queue", "text_queue", "idx_queue", "queue_ptr", "temp"]:
        if k in sd:
            keep[k] = sd[k].clone().contiguous()
    for k in outs:
        if k.startswith("momentum_updated."):
            km = k[len("momentum_updated."):]
            head, rest = km.split(".", 1)
            assert head.endswith("_m")
            ko = head[:-2] + "." + rest
            keep[km] = sd[km].clone().contiguous()
            keep[ko] = sd[ko].clone().contiguous()
    save_file(keep, f"{OUT}/{model}_{case}_buffers.safetensors")

ref = {}
# ALBEF.mask() draw order on the CPU generator.
torch.manual_seed(1234)
shape = (8, 24)
ref["mlm_seed1234_masked"] = torch.bernoulli(torch.full(shape, 0.15))
ref["mlm_seed1234_replaced"] = torch.bernoulli(torch.full(shape, 0.8))
ref["mlm_seed1234_random"] = torch.bernoulli(torch.full(shape, 0.5))
ref["mlm_seed1234_random_words"] = torch.randint(64, shape, dtype=torch.long)
# Official per-row multinomial loop: negative images (t2i rows) first, then negative texts.
g = torch.Generator().manual_seed(7)
w_t2i = torch.rand(5, 5, generator=g); w_t2i.fill_diagonal_(0)
w_i2t = torch.rand(5, 5, generator=g); w_i2t.fill_diagonal_(0)
ref["multinomial_w_t2i"] = w_t2i
ref["multinomial_w_i2t"] = w_i2t
torch.manual_seed(99)
ref["multinomial_seed99_neg_image"] = torch.tensor([torch.multinomial(w_t2i[b], 1).item() for b in range(5)])
ref["multinomial_seed99_neg_text"] = torch.tensor([torch.multinomial(w_i2t[b], 1).item() for b in range(5)])
# BLIP med.py LM loss with reduction='none': per-sequence sums (label smoothing 0.1).
for case in ["captioning_1"]:
    i = load_file(f"tests/fixtures/blip/{case}/inputs.safetensors")
    o = load_file(f"tests/fixtures/blip/{case}/outputs.safetensors")
    lg, lab = o["decoder_logits"], i["labels"]
    per = F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), lab[:, 1:].reshape(-1),
                          reduction="none", label_smoothing=0.1).view(lg.shape[0], -1).sum(1)
    ref[f"blip_{case}_lm_per_sequence"] = per
save_file({k: v.contiguous() for k, v in ref.items()}, f"{OUT}/torch_reference.safetensors")
print("ok")
