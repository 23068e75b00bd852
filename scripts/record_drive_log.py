#!/usr/bin/env python
"""Record CarRacing-v3 drive logs driven by an expert pure-pursuit controller.

Each seed gives one track (Gymnasium's CarRacing-v3 generates the track layout from the reset
seed) and one drive log in the format :func:`fastviz.data.load_drive_log` reads:

* ``DIR/carracing_seed{N}.mkv`` -- the observations (96x96 RGB, exactly as the simulator
  rendered them), losslessly encoded with FFV1 at 50 fps;
* ``DIR/carracing_seed{N}.csv`` -- ``frame,time_s,steering_rad``, one row per frame.

Both files are written under temporary names (``*.tmp.mkv`` / ``*.tmp.csv``) and renamed when
complete and verified (the video is decoded again and compared bit-exactly with the frames).

Steering unit and sign
----------------------
``steering_rad`` is ``action[0]`` as passed to ``env.step``, clipped to [-0.4, +0.4]. CarRacing
calls ``car.steer(-action[0])``; the front-wheel revolute joints have limits of +-0.4 rad and
their target angle is the command in radians. So the recorded value IS the front-wheel target
angle in radians, **positive = steer right** (checked: holding ``action[0] = +0.3`` for 3 s turns
the hull clockwise, i.e. the car turns right, and the joint angle settles at -0.3 in Box2D's
counter-clockwise convention).

Frame t of a log is the observation the controller saw when it chose action t (the
observation returned by the previous ``env.step``); ``steering_rad[t]`` is the steering
command applied by action t, noise included.

Recording starts after the first second of the episode (the camera zoom-in animation, during
which the car stands still with a zero action). An episode stops at the requested duration, when
the lap completes, or when the car leaves the playfield.

Expert controller (written against the simulator's own geometry, not the pixels)
--------------------------------------------------------------------------------
* Pure pursuit on the track centre line (``env.unwrapped.track`` waypoints, 3.5 units apart):
  the car's position is projected onto the closed centre-line polyline, the look-ahead point is
  ``--lookahead`` units (default 11) further along it, and the front-wheel angle is the
  pure-pursuit law ``delta = atan(2 L sin(alpha) / l_d)`` with ``L`` the wheelbase (3.24 units),
  ``alpha`` the angle of the look-ahead point from the car's heading and ``l_d`` its distance.
  ``delta`` (positive = left in Box2D's convention) becomes the command ``-delta``, smoothed by
  a first-order low-pass (time constant ``--smooth``, default 0.06 s) and clipped to +-0.4 rad.
* Speed control: target speed ``--speed`` (default 32 units/s) on straights, reduced for the
  curvature of the next 10..45 units of centre line (down to 55% of it in the sharpest
  curves); proportional gas/brake towards it.

Steering noise (for recoveries)
-------------------------------
``--noise A`` (default 0.12 rad) adds episodic, smooth steering pulses on top of the expert's
command: on average every ``--noise-every`` seconds (default 4 s, exponential intervals) a pulse
starts, lasting 0.4..0.9 s, shaped as a half sine with peak amplitude uniform in [0.5 A, A] and a
random sign. Each pulse pushes the car off the centre line; the expert then steers back, so the
logs contain recoveries. Roughly 15% of frames lie inside a pulse. The pulse is part of the
applied command, so it is part of the recorded label. ``--noise 0`` records the clean expert.

Example::

    python scripts/record_drive_log.py --seeds 1 2 3 --seconds 60 --out logs --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

FPS = 50
STEER_LIMIT = 0.4  # rad, the front-wheel joint limit of CarRacing's car
WHEELBASE = (80 + 82) * 0.02  # car_dynamics: front wheels at y=+80, rear at y=-82, SIZE=0.02
ZOOM_SECONDS = 1.0  # CarRacing's camera zoom-in animation at the start of an episode


@dataclass
class ControllerConfig:
    lookahead: float = 11.0  # units along the centre line
    speed: float = 32.0  # target speed on straights, units/s
    min_speed_frac: float = 0.55  # target speed in the sharpest curves, as a fraction of speed
    smooth: float = 0.06  # low-pass time constant of the steering command, s
    noise: float = 0.12  # peak amplitude of the steering pulses, rad
    noise_every: float = 4.0  # mean interval between pulse starts, s


class CentreLine:
    """The closed track centre line with arc-length lookups."""

    def __init__(self, track: list[tuple[float, float, float, float]]) -> None:
        self.xy = np.array([(x, y) for _, _, x, y in track], dtype=np.float64)
        nxt = np.roll(self.xy, -1, axis=0)
        self.seg = nxt - self.xy
        self.seg_len = np.linalg.norm(self.seg, axis=1)
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])  # s[i]: arc length at point i
        self.length = float(self.s[-1])
        self.heading = np.arctan2(self.seg[:, 1], self.seg[:, 0])
        self.n = len(self.xy)
        self.index = 0

    def project(self, p: np.ndarray) -> float:
        """Arc length of the point of the centre line nearest ``p`` (searched near the last one)."""
        idx = (self.index + np.arange(-8, 40)) % self.n
        a = self.xy[idx]
        d = self.seg[idx]
        t = np.clip(np.einsum("ij,ij->i", p - a, d) / (self.seg_len[idx] ** 2), 0.0, 1.0)
        q = a + t[:, None] * d
        k = int(np.argmin(np.sum((q - p) ** 2, axis=1)))
        self.index = int(idx[k])
        return float(self.s[self.index] + t[k] * self.seg_len[self.index])

    def point(self, s: float) -> np.ndarray:
        s = s % self.length
        i = int(np.searchsorted(self.s, s, side="right") - 1) % self.n
        t = (s - self.s[i]) / self.seg_len[i]
        return self.xy[i] + t * self.seg[i]

    def turning(self, s0: float, s1: float) -> float:
        """Mean absolute heading change per unit length between arc lengths s0 and s1."""
        pts = np.array([self.point(s) for s in np.linspace(s0, s1, 8)])
        h = np.arctan2(np.diff(pts[:, 1]), np.diff(pts[:, 0]))
        dh = np.angle(np.exp(1j * np.diff(h)))
        return float(np.sum(np.abs(dh)) / (s1 - s0))


class Expert:
    """Pure pursuit + speed control + episodic steering pulses."""

    def __init__(self, track, cfg: ControllerConfig, rng: np.random.Generator) -> None:
        self.line = CentreLine(track)
        self.cfg = cfg
        self.rng = rng
        self.cmd = 0.0
        self.pulse_left = 0  # frames
        self.pulse_len = 1
        self.pulse_amp = 0.0
        self.next_pulse = self._draw_interval() + 1.0 * FPS

    def _draw_interval(self) -> int:
        return int(self.rng.exponential(self.cfg.noise_every * FPS))

    def noise(self) -> float:
        if self.cfg.noise <= 0:
            return 0.0
        if self.pulse_left == 0:
            self.next_pulse -= 1
            if self.next_pulse <= 0:
                self.pulse_len = self.pulse_left = int(self.rng.uniform(0.4, 0.9) * FPS)
                self.pulse_amp = self.rng.choice([-1.0, 1.0]) * self.rng.uniform(0.5, 1.0) * self.cfg.noise
                self.next_pulse = self._draw_interval()
        if self.pulse_left > 0:
            phase = (self.pulse_len - self.pulse_left + 0.5) / self.pulse_len
            self.pulse_left -= 1
            return float(self.pulse_amp * math.sin(math.pi * phase))
        return 0.0

    def act(self, car) -> tuple[np.ndarray, float]:
        """The action for the car's current state, and the noise-free expert command."""
        cfg = self.cfg
        p = np.array(car.hull.position, dtype=np.float64)
        ang = float(car.hull.angle)
        fwd = np.array([-math.sin(ang), math.cos(ang)])
        s = self.line.project(p)
        target = self.line.point(s + cfg.lookahead)
        v = target - p
        ld = max(float(np.hypot(*v)), 1e-6)
        alpha = math.atan2(fwd[0] * v[1] - fwd[1] * v[0], fwd @ v)  # > 0: target on the left
        delta = math.atan2(2.0 * WHEELBASE * math.sin(alpha), ld)  # > 0: steer left
        raw = float(np.clip(-delta, -STEER_LIMIT, STEER_LIMIT))  # command: > 0 = right
        a = 1.0 - math.exp(-1.0 / (FPS * cfg.smooth)) if cfg.smooth > 0 else 1.0
        self.cmd += a * (raw - self.cmd)
        steer = float(np.clip(self.cmd + self.noise(), -STEER_LIMIT, STEER_LIMIT))

        turn = self.line.turning(s + 10.0, s + 45.0)  # rad per unit
        frac = float(np.clip(1.0 - turn / 0.06, 0.0, 1.0))
        v_target = cfg.speed * (cfg.min_speed_frac + (1.0 - cfg.min_speed_frac) * frac)
        speed = float(np.hypot(*car.hull.linearVelocity))
        err = v_target - speed
        gas = float(np.clip(0.1 * err, 0.0, 1.0))
        brake = float(np.clip(-0.05 * err, 0.0, 0.6)) if err < -2.0 else 0.0
        return np.array([steer, gas, brake], dtype=np.float64), self.cmd


def record(seed: int, seconds: float, out: Path, cfg: ControllerConfig, name: str | None = None,
           progress: bool = True, position: int = 0) -> dict:
    """Drive one episode of CarRacing-v3 and write ``out/NAME.mkv`` + ``out/NAME.csv``.

    Returns a summary dict (frames, seconds, why it stopped, laps progress, timing).
    """
    import gymnasium as gym

    name = name or f"carracing_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    n_max = int(round(seconds * FPS))
    # max_episode_steps: lift gymnasium's default 1000-step TimeLimit (zoom steps + the recording)
    env = gym.make("CarRacing-v3", render_mode=None, max_episode_steps=n_max + 10 * FPS)
    t0 = time.perf_counter()
    try:
        obs, _ = env.reset(seed=seed)
        u = env.unwrapped
        while u.t < ZOOM_SECONDS - 1e-9:  # camera zoom-in: stand still
            obs, *_ = env.step(np.zeros(3))
        expert = Expert(u.track, cfg, np.random.default_rng(10_000 + seed))
        frames, steering, clean = [], [], []
        stop = "duration"
        bar = tqdm(total=n_max, desc=name, unit="frame", disable=not progress, position=position, leave=False)
        for _ in range(n_max):
            action, expert_cmd = expert.act(u.car)
            frames.append(obs)
            steering.append(float(action[0]))
            clean.append(expert_cmd)
            obs, _, terminated, truncated, info = env.step(action)
            bar.update(1)
            if terminated or truncated:
                stop = "lap complete" if info.get("lap_finished") else "left playfield" if terminated else "truncated"
                break
        bar.close()
        sim_s = time.perf_counter() - t0
        tiles = u.tile_visited_count / len(u.track)
    finally:
        env.close()

    frames_arr = np.stack(frames)
    steer_arr = np.asarray(steering)
    video, table = out / f"{name}.mkv", out / f"{name}.csv"
    tmp_video, tmp_table = out / f"{name}.tmp.mkv", out / f"{name}.tmp.csv"
    try:
        h, w = frames_arr.shape[1:3]
        writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"FFV1"), float(FPS), (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write FFV1 video to {tmp_video}")
        for f in frames_arr:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        with open(tmp_table, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["frame", "time_s", "steering_rad"])
            for i, s in enumerate(steer_arr):
                wr.writerow([i, f"{i / FPS:.2f}", f"{s:.6f}"])
        # verify: the video decodes to exactly the frames recorded
        cap = cv2.VideoCapture(str(tmp_video))
        back = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            back.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        if len(back) != len(frames_arr) or not np.array_equal(np.stack(back), frames_arr):
            raise RuntimeError(f"{tmp_video}: the video does not decode to the recorded frames")
        os.replace(tmp_video, video)
        os.replace(tmp_table, table)
    finally:
        for p in (tmp_video, tmp_table):
            if p.exists():
                p.unlink()
    noise = steer_arr - np.clip(np.asarray(clean), -STEER_LIMIT, STEER_LIMIT)
    return {
        "seed": seed,
        "name": name,
        "frames": len(frames_arr),
        "seconds": len(frames_arr) / FPS,
        "stop": stop,
        "track_visited": tiles,
        "steer_std": float(steer_arr.std()),
        "noisy_frames": float(np.mean(np.abs(noise) > 1e-6)),
        "wall_s": time.perf_counter() - t0,
        "sim_s": sim_s,
        "bytes": video.stat().st_size + table.stat().st_size,
        "path": str(video),
    }


def add_controller_args(p: argparse.ArgumentParser) -> None:
    d = ControllerConfig()
    p.add_argument("--lookahead", type=float, default=d.lookahead, help="pure-pursuit look-ahead along the centre line, track units (default %(default)s)")
    p.add_argument("--speed", type=float, default=d.speed, help="target speed on straights, units/s (default %(default)s)")
    p.add_argument("--min-speed-frac", type=float, default=d.min_speed_frac, help="target speed in the sharpest curves as a fraction of --speed (default %(default)s)")
    p.add_argument("--smooth", type=float, default=d.smooth, help="steering low-pass time constant, s (default %(default)s)")
    p.add_argument("--noise", type=float, default=d.noise, help="peak amplitude of the episodic steering pulses, rad; 0 = clean expert (default %(default)s)")
    p.add_argument("--noise-every", type=float, default=d.noise_every, help="mean interval between steering pulses, s (default %(default)s)")


def config_from_args(a: argparse.Namespace) -> ControllerConfig:
    return ControllerConfig(lookahead=a.lookahead, speed=a.speed, min_speed_frac=a.min_speed_frac,
                            smooth=a.smooth, noise=a.noise, noise_every=a.noise_every)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=(
            "Record CarRacing-v3 drive logs (FFV1 .mkv + frame,time_s,steering_rad .csv) driven by a "
            "pure-pursuit expert with episodic steering noise. steering_rad is the applied steering "
            "command = the front-wheel target angle in RADIANS, POSITIVE = STEER RIGHT, limited to "
            "+-0.4 rad by the simulator."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="reset seeds; each gives one track and one log")
    p.add_argument("--seconds", type=float, default=60.0, help="maximum recorded duration per seed (stops earlier at lap end)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--jobs", type=int, default=1, help="seeds recorded in parallel (processes)")
    add_controller_args(p)
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    t0 = time.perf_counter()
    results = []
    if a.jobs <= 1:
        for seed in tqdm(a.seeds, desc="seeds", unit="seed"):
            results.append(record(seed, a.seconds, a.out, cfg, position=1))
    else:
        with ProcessPoolExecutor(max_workers=a.jobs) as ex:
            futs = [ex.submit(record, seed, a.seconds, a.out, cfg, None, False) for seed in a.seeds]
            for fut in tqdm(as_completed(futs), total=len(futs), desc="seeds", unit="seed"):
                results.append(fut.result())
    for r in sorted(results, key=lambda r: r["seed"]):
        print(
            f"seed {r['seed']:>4}: {r['frames']:5d} frames ({r['seconds']:.1f} s, stop: {r['stop']}, "
            f"track visited {100 * r['track_visited']:.0f}%), steering std {r['steer_std']:.3f} rad, "
            f"noisy frames {100 * r['noisy_frames']:.0f}%, {r['bytes'] / 1e6:.2f} MB, {r['wall_s']:.0f} s -> {r['path']}"
        )
    print(f"total: {sum(r['frames'] for r in results)} frames in {time.perf_counter() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
