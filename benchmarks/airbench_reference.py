"""airbench94's own training code (KellerJordan/cifar10-airbench, legacy/airbench94.py) on a CPU, on our JPEGs.

Usage: python benchmarks/airbench_reference.py [--data ../shared/datasets/cifar10] [--widths 32,128,128]
[--epochs 4] [--ntrain 45000] [--ours-bias | --no-bias-wd] [--eval-each-epoch] [--tag NAME]

The reference that explains fastnet's gap to airbench94 (docs/explanation/recipes.md;
the figures: docs/reference/benchmarks.md): the same network, whitening, optimiser, schedule, lookahead,
augmentation and TTA as airbench94.py, run with bf16 autocast and
channels_last instead of fp16 on a GPU, on the class folders' JPEGs
(decoded once with PIL) rather than torchvision's CIFAR-10 arrays. Test
accuracy on the 10,000 test images without TTA, with the mirror (tta1) and
with mirror + 1-px shifts (tta2). ``--ntrain`` takes a seeded random subset
of the 50,000 training images; ``--ours-bias`` gives fastnet's old parameter
groups (the whitening bias at 64x, no decay on biases), ``--no-bias-wd`` the
new ones (no decay on biases, 64x on BatchNorm biases only). One record per
run is added to ``benchmarks/results/airbench_reference.json`` under ``--tag``,
with the training seconds (augmentation included, evaluation excluded), the
img/s they give and the 1-minute load average before and after: run it under
``flock /tmp/imgclf-bench.lock`` for a timing. ``--eval-each-epoch`` records
the test accuracy (no TTA) of the weights after each whole epoch, outside the
timed section and without touching the run (eval mode, no gradients, no random
draws); mid-schedule weights, so a lower bound on what a run of that length
with its own schedule would reach.
"""

import argparse
import json
import os
import time
from math import ceil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10"))
p.add_argument("--widths", default="64,256,256")
p.add_argument("--epochs", type=float, default=9.9)
p.add_argument("--batch", type=int, default=1024)
p.add_argument("--ntrain", type=int, default=50000)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--aug", default="airbench")  # airbench | light
p.add_argument("--avg", default="lookahead")  # lookahead | none
p.add_argument("--whiten-bias-epochs", type=float, default=3)
p.add_argument("--ours-bias", action="store_true", help="whitening bias 64x lr; no wd on any bias (as imgclf)")
p.add_argument("--no-bias-wd", action="store_true", help="whitening bias 1x lr; no wd on any bias")
p.add_argument("--end", type=float, default=0.07)
p.add_argument("--tag", default="")
p.add_argument("--eval-each-epoch", action="store_true", help="untimed test accuracy (no TTA) after every epoch")
a = p.parse_args()
torch.manual_seed(a.seed)
LOAD_BEFORE = round(os.getloadavg()[0], 2)
W = [int(x) for x in a.widths.split(",")]
MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def load(split):
    classes = sorted(folder.name for folder in (a.data / "train").iterdir() if folder.is_dir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((a.data / split / name).iterdir())]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(path).convert("RGB")) for path, _ in files]))
    x = x.permute(0, 3, 1, 2).float() / 255
    return ((x - MEAN) / STD).contiguous(memory_format=torch.channels_last), torch.tensor([label for _, label in files])


Xtr, Ytr = load("train")
Xte, Yte = load("test")
g = torch.Generator().manual_seed(1234)
perm = torch.randperm(len(Xtr), generator=g)[: a.ntrain]
Xtr, Ytr = Xtr[perm], Ytr[perm]


def batch_flip_lr(x):
    m = (torch.rand(len(x)) < 0.5).view(-1, 1, 1, 1)
    return torch.where(m, x.flip(-1), x)


def batch_crop(images, crop):
    r = (images.size(-1) - crop) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2))
    out = torch.empty((len(images), 3, crop, crop), dtype=images.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            m = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[m] = images[m, :, r + sy : r + sy + crop, r + sx : r + sx + crop]
    return out


class BN(nn.BatchNorm2d):
    def __init__(self, n):
        super().__init__(n, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    def __init__(self, i, o, k=3, padding="same", bias=False):
        super().__init__(i, o, kernel_size=k, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        torch.nn.init.dirac_(self.weight.data[: self.weight.size(1)])


class Group(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv1 = Conv(i, o)
        self.norm1 = BN(o)
        self.conv2 = Conv(o, o)
        self.norm2 = BN(o)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Mul(nn.Module):
    def forward(self, x):
        return x / 9


net = nn.Sequential(
    Conv(3, 24, 2, padding=0, bias=True),
    nn.GELU(),
    Group(24, W[0]),
    Group(W[0], W[1]),
    Group(W[1], W[2]),
    nn.MaxPool2d(3),
    nn.Flatten(),
    nn.Linear(W[2], 10, bias=False),
    Mul(),
)
net[0].weight.requires_grad = False
net = net.to(memory_format=torch.channels_last)
# whitening
x = Xtr[:5000]
c = 3
patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c, 2, 2).float()
pf = patches.reshape(len(patches), -1)
cov = pf.T @ pf / len(pf)
ev, evec = torch.linalg.eigh(cov, UPLO="U")
ev = ev.flip(0).view(-1, 1, 1, 1)
evec = evec.T.reshape(12, 3, 2, 2).flip(0)
es = evec / torch.sqrt(ev + 5e-4)
net[0].weight.data[:] = torch.cat((es, -es))

B = a.batch
mom = 0.85
ks = 1024 * (1 + 1 / (1 - mom))
lr = 11.5 / ks
wd = 0.0153 * B / ks
lrb = lr * 64
steps_per_epoch = len(Xtr) // B
total = ceil(steps_per_epoch * a.epochs)
norm_b = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
other = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
if a.no_bias_wd:
    wb = net[0].bias
    other = [p for p in other if p is not wb]
    groups = [
        dict(params=norm_b, lr=lrb, weight_decay=0.0),
        dict(params=[wb], lr=lr, weight_decay=0.0),
        dict(params=other, lr=lr, weight_decay=wd / lr),
    ]
elif a.ours_bias:
    wb = net[0].bias
    other = [p for p in other if p is not wb]
    groups = [dict(params=norm_b + [wb], lr=lrb, weight_decay=0.0), dict(params=other, lr=lr, weight_decay=wd / lr)]
else:
    groups = [dict(params=norm_b, lr=lrb, weight_decay=wd / lrb), dict(params=other, lr=lr, weight_decay=wd / lr)]
opt = torch.optim.SGD(groups, momentum=mom, nesterov=True)


def get_lr(step):
    wu = int(total * 0.23)
    if step < wu:
        f = step / wu
        return 0.2 * (1 - f) + f
    f = (step - wu) / (total - wu)
    return (1 - f) + a.end * f


sched = torch.optim.lr_scheduler.LambdaLR(opt, get_lr)
alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
slow = {k: v.clone() for k, v in net.state_dict().items()}


def la(decay):
    for s, v in zip(slow.values(), net.state_dict().values()):
        if v.dtype.is_floating_point:
            s.lerp_(v, 1 - decay)
            v.copy_(s)


loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")
if a.aug == "airbench":
    flipped = batch_flip_lr(Xtr)
    padded = F.pad(flipped, (2,) * 4, "reflect")


def epoch_images(ep):
    if a.aug == "airbench":
        im = batch_crop(padded, 32)
        if ep % 2 == 1:
            im = im.flip(-1)
        return im
    pad = F.pad(Xtr, (4,) * 4)  # light: zero-pad 4 px random shift + random flip
    return batch_flip_lr(batch_crop(pad, 32))


def evaluate(tta):
    net.eval()
    outs = []
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for xb in Xte.split(1000):

            def m(z):
                return 0.5 * net(z).float() + 0.5 * net(z.flip(-1)).float()

            if tta == 0:
                o = net(xb).float()
            elif tta == 1:
                o = m(xb)
            else:
                pd = F.pad(xb, (1,) * 4, "reflect")
                o = 0.5 * m(xb) + 0.5 * torch.stack([m(pd[:, :, 0:32, 0:32]), m(pd[:, :, 2:34, 2:34])]).mean(0)
            outs.append(o)
    net.train()
    return (torch.cat(outs).argmax(1) == Yte).float().mean().item()


step = 0
t_train = 0.0
along = []  # (epoch, step, train seconds so far, tta0 of the fast weights) when --eval-each-epoch
for ep in range(ceil(a.epochs)):
    net[0].bias.requires_grad = ep < a.whiten_bias_epochs
    t0 = time.perf_counter()
    ims = epoch_images(ep)
    idx = torch.randperm(len(ims))
    net.train()
    for i in range(steps_per_epoch):
        j = idx[i * B : (i + 1) * B]
        with torch.autocast("cpu", torch.bfloat16):
            out = net(ims[j])
        loss = loss_fn(out.float(), Ytr[j]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if a.avg == "lookahead" and step % 5 == 0:
            la(alpha[step].item())
        if step >= total:
            if a.avg == "lookahead":
                la(1.0)
            break
    t_train += time.perf_counter() - t0
    mid = evaluate(0) if a.eval_each_epoch and step < total else None
    if mid is not None:
        along.append(dict(epoch=ep + 1, step=step, train_s=round(t_train, 1), tta0=round(mid, 4)))
    print(f"epoch {ep} step {step} {t_train:.0f}s" + ("" if mid is None else f" tta0 {mid:.4f}"), flush=True)
res = dict(vars(a), tta0=evaluate(0), tta1=evaluate(1), tta2=evaluate(2), train_s=round(t_train, 1))
res.update(
    img_per_s=round(step * B / t_train, 1),
    threads=torch.get_num_threads(),
    load_before=LOAD_BEFORE,
    load_after=round(os.getloadavg()[0], 2),
)
if along:
    res["along"] = along
res["data"] = str(res["data"])
print(json.dumps(res), flush=True)
RESULTS = Path(__file__).parent / "results" / "airbench_reference.json"
records = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
records[a.tag or f"{a.widths}-{a.epochs:g}ep-{a.ntrain}"] = res
RESULTS.write_text(json.dumps(records, indent=2) + "\n")
