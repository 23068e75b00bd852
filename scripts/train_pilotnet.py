#!/usr/bin/env python
"""Train fastviz's PilotNet on CarRacing-v3 drive logs, holding whole tracks out for validation.

Reads every ``carracing_seed{N}.mkv`` (+ ``.csv``) drive log in ``--logs`` (as written by
``record_drive_log.py``). The logs of ``--val-seeds`` (whole tracks) are held out for validation
and model selection; the rest (or ``--train-seeds``) are trained on. The target is
``steering_rad``: the front-wheel target angle in radians, positive = steer right, within
+-0.4 rad.

Preprocessing: ``FramePreprocess(size=(66, 200), crop=(0.0, 0.875, 0.0, 1.0))`` -- the top 84 of
the 96 rows, so the dashboard (bottom 12 rows, which draws the true steering and speed
indicators) is never seen by the model. It is stored in the weights file's metadata, so
``fastviz.models.load`` rebuilds it.

Training (CPU, ``torch.set_num_threads(--threads)``): Adam, MSE, cosine learning-rate decay,
each epoch a random ``1/--every`` of the training frames (neighbouring frames at 50 fps are nearly
identical), augmented with horizontal flips (steering negated; the scene is mirror-symmetric,
the car sits at the horizontal centre) and brightness/contrast jitter. The weights with the
lowest validation MSE are kept (early stopping after ``--patience`` epochs without
improvement). Everything is seeded (``--seed``).

Writes the weights with :func:`fastviz.models.save` (safetensors; metadata: validation figures,
seeds, settings) to ``fastviz/models/weights/pilotnet-carracing.safetensors`` by default, then
loads that file back and reports R^2 and MSE on the bundled held-out example log.

Example::

    python scripts/train_pilotnet.py --logs logs --val-seeds 101 102 103
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import fastviz.models as fvm
from fastviz.data import example_log_path, load_drive_log
from fastviz.models import FramePreprocess, PilotNet

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "fastviz" / "models" / "weights" / "pilotnet-carracing.safetensors"
CROP = (0.0, 0.875, 0.0, 1.0)  # top 84/96 rows: no dashboard
LOG_RE = re.compile(r"carracing_seed(\d+)\.mkv$")

log = logging.getLogger("train_pilotnet")


def r2_score(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    return float(1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(y, np.float64) - np.asarray(p, np.float64)) ** 2))


def to_cache(frames: np.ndarray, transform: FramePreprocess, chunk: int = 512) -> torch.Tensor:
    """Preprocessed frames as uint8 (N, 3, 66, 200): 1/4 the memory of float32, error < 0.5/255."""
    out = []
    for i in range(0, len(frames), chunk):
        out.append(transform(frames[i : i + chunk]).mul_(255.0).round_().to(torch.uint8))
    return torch.cat(out)


def load_logs(folder: Path, seeds: list[int], transform: FramePreprocess) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    data = {}
    for seed in tqdm(seeds, desc="loading logs", unit="log"):
        dl = load_drive_log(folder / f"carracing_seed{seed}.mkv")
        data[seed] = (to_cache(dl.frames, transform), torch.from_numpy(dl.steering.astype(np.float32)))
    return data


@torch.no_grad()
def predict(model: PilotNet, x_u8: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(x_u8[i : i + batch].float().div_(255.0)).squeeze(1) for i in range(0, len(x_u8), batch)]
    return torch.cat(out).numpy()


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip, -y, y)
    if jitter > 0:
        gain = 1.0 + jitter * (2.0 * torch.rand(n, 1, 1, 1, generator=g) - 1.0)
        bias = 0.5 * jitter * (2.0 * torch.rand(n, 1, 1, 1, generator=g) - 1.0)
        x = (x * gain + bias).clamp_(0.0, 1.0)
    return x, y


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=(
            "Train PilotNet on CarRacing-v3 drive logs (target: steering_rad, the front-wheel target angle "
            "in RADIANS, POSITIVE = STEER RIGHT, +-0.4 rad limit), holding whole tracks out for validation."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--logs", type=Path, default=Path("logs"), help="folder of carracing_seed{N}.mkv/.csv drive logs")
    p.add_argument("--val-seeds", type=int, nargs="+", default=[101, 102, 103], help="tracks held out for validation")
    p.add_argument("--train-seeds", type=int, nargs="*", default=None, help="tracks to train on (default: every other log in --logs)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weights file to write")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--every", type=int, default=3, help="each epoch uses a random 1/EVERY of the training frames")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--jitter", type=float, default=0.1, help="brightness/contrast jitter amplitude")
    p.add_argument("--patience", type=int, default=4, help="stop after this many epochs without a better validation MSE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    t_start = time.perf_counter()

    found = sorted(int(m.group(1)) for f in a.logs.glob("carracing_seed*.mkv") if (m := LOG_RE.search(f.name)))
    val_seeds = sorted(a.val_seeds)
    train_seeds = sorted(a.train_seeds) if a.train_seeds else [s for s in found if s not in val_seeds]
    if set(train_seeds) & set(val_seeds):
        p.error(f"train and validation seeds overlap: {sorted(set(train_seeds) & set(val_seeds))}")
    missing = [s for s in train_seeds + val_seeds if s not in found]
    if missing or not train_seeds:
        p.error(f"no drive log in {a.logs} for seeds {missing}" if missing else f"no training logs in {a.logs}")
    log.info("train seeds %s, validation seeds %s", train_seeds, val_seeds)

    transform = FramePreprocess(size=PilotNet.input_size, crop=CROP, frame_size=(96, 96))  # CarRacing-v3 renders 96 x 96
    train = load_logs(a.logs, train_seeds, transform)
    val = load_logs(a.logs, val_seeds, transform)
    x_train = torch.cat([train[s][0] for s in train_seeds])
    y_train = torch.cat([train[s][1] for s in train_seeds])
    del train
    y_val_all = np.concatenate([val[s][1].numpy() for s in val_seeds])
    log.info("%d training frames, %d validation frames (loaded in %.0f s)", len(x_train), len(y_val_all), time.perf_counter() - t_start)

    model = PilotNet(preprocess=transform)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs, eta_min=a.lr * 0.02)
    g = torch.Generator().manual_seed(a.seed)

    best = {"mse": float("inf")}
    stale = 0
    t_train = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        model.train()
        idx = torch.randperm(len(x_train), generator=g)[: len(x_train) // a.every]
        losses, preds, ys = [], [], []
        bar = tqdm(range(0, len(idx), a.batch_size), desc=f"epoch {epoch}/{a.epochs}", unit="batch", leave=False)
        for i in bar:
            b = idx[i : i + a.batch_size]
            x, y = augment(x_train[b].float().div_(255.0), y_train[b], g, a.jitter)
            out = model(x).squeeze(1)
            loss = F.mse_loss(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            preds.append(out.detach().numpy())
            ys.append(y.numpy())
            if len(losses) % 20 == 0:
                bar.set_postfix(mse=f"{np.mean(losses[-20:]):.5f}")
        sched.step()
        train_mse = float(np.mean(losses))
        train_r2 = r2_score(np.concatenate(ys), np.concatenate(preds))  # on augmented batches, while training
        per = {s: predict(model, val[s][0]) for s in val_seeds}
        p_val = np.concatenate([per[s] for s in val_seeds])
        val_mse, val_r2 = mse(y_val_all, p_val), r2_score(y_val_all, p_val)
        per_txt = ", ".join(f"seed {s}: R2 {r2_score(val[s][1].numpy(), per[s]):.3f}" for s in val_seeds)
        log.info("epoch %2d: train MSE %.5f R2 %.3f | val MSE %.5f R2 %.3f (%s) | %.0f s",
                 epoch, train_mse, train_r2, val_mse, val_r2, per_txt, time.perf_counter() - t_train)
        if val_mse < best["mse"]:
            best = {"mse": val_mse, "r2": val_r2, "epoch": epoch, "per": per,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            stale = 0
        else:
            stale += 1
            if stale >= a.patience:
                log.info("early stop: no better validation MSE for %d epochs", a.patience)
                break
    train_s = time.perf_counter() - t_train
    model.load_state_dict(best["state"])
    model.eval()

    per_track = {s: (mse(val[s][1].numpy(), best["per"][s]), r2_score(val[s][1].numpy(), best["per"][s])) for s in val_seeds}
    ex = load_drive_log(example_log_path())
    ex_pred = predict(model, to_cache(ex.frames, transform))
    ex_mse, ex_r2 = mse(ex.steering, ex_pred), r2_score(ex.steering, ex_pred)

    a.out.parent.mkdir(parents=True, exist_ok=True)
    fvm.save(
        model,
        a.out,
        description="PilotNet trained on CarRacing-v3 drive logs (pure-pursuit expert with episodic steering noise); "
        "output: front-wheel target angle in radians, positive = steer right, +-0.4 rad limit",
        train_seeds=",".join(map(str, train_seeds)),
        val_seeds=",".join(map(str, val_seeds)),
        val_mse=f"{best['mse']:.6f}",
        val_r2=f"{best['r2']:.4f}",
        val_per_track=";".join(f"{s}:mse={m:.6f},r2={r:.4f}" for s, (m, r) in per_track.items()),
        example_log_mse=f"{ex_mse:.6f}",
        example_log_r2=f"{ex_r2:.4f}",
        best_epoch=str(best["epoch"]),
        train_frames=str(len(x_train)),
        settings=f"epochs={a.epochs} every={a.every} batch_size={a.batch_size} lr={a.lr} weight_decay={a.weight_decay} "
        f"jitter={a.jitter} patience={a.patience} seed={a.seed} flip=True",
        torch_version=torch.__version__,
    )

    # check the written file: load it back the way users do
    loaded = fvm.load(a.out)
    with torch.no_grad():
        chk = np.concatenate([loaded(loaded.preprocess(ex.frames[i : i + 256])).squeeze(1).numpy() for i in range(0, len(ex), 256)])
    print(f"\nbest epoch {best['epoch']}, training {train_s:.0f} s, total {time.perf_counter() - t_start:.0f} s")
    print(f"validation (whole held-out tracks): MSE {best['mse']:.6f}  R2 {best['r2']:.4f}")
    for s, (m, r) in per_track.items():
        print(f"  seed {s}: MSE {m:.6f}  R2 {r:.4f}  ({len(val[s][1])} frames)")
    print(f"bundled example log ({ex.path.name}, {len(ex)} frames): MSE {mse(ex.steering, chk):.6f}  R2 {r2_score(ex.steering, chk):.4f}")
    print(f"weights: {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
