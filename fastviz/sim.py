"""A live frame source that is also a closed loop: a model steers Gymnasium's CarRacing-v3.

:class:`CarRacingSource` is the source behind ``fastviz live sim``. It yields the simulator's
observations (96 x 96 RGB, exactly as the car's camera renders them) like any other live source,
and the pipeline hands the model's output for each frame back through :meth:`~CarRacingSource.feedback`;
that output is the steering of the next simulator step. The saliency overlay then shows what the
model looked at while it was actually driving.

Steering unit and sign
----------------------
The same convention as the recorded drive logs (``scripts/record_drive_log.py``) that the bundled
``pilotnet-carracing`` model was trained on: a prediction is the front-wheel target angle in
**radians, positive = steer right**, and it is applied unchanged as ``action[0]``, clipped to the
simulator's joint limit of +-0.4 rad (:data:`STEER_LIMIT`). So the bundled model's output is
exactly the ``action[0]`` it was trained to imitate.

The model only steers
---------------------
Throttle and brake come from a speed controller, not from the model: proportional gas towards a
constant target speed (``speed``, units/s, read from the car's hull velocity), proportional
brake when more than 2 units/s too fast -- the speed control of the drive-log expert without its
curvature-dependent slow-down (which needs the track's centre line, i.e. knowledge the model
does not have). The expert drove at 17.6 to 32 units/s; the default 25 keeps the bundled model
on seeds 0 and 1 over 1,500 steps with no second off the track.

Timing
------
``realtime=True`` (``live = True``): the simulator steps at ``fps`` on the wall clock, each step
with the newest steering received so far, whatever frame it belongs to. Frames keep coming when
the model lags, as a real car's camera does, and the lag (in frames) is part of what the live
view shows; :meth:`~CarRacingSource.report` gives its mean. A step that falls more than one frame
period behind its slot (a slow machine) restarts the schedule from now: the world slows down, it
never jumps.

``realtime=False`` (``live = False``, lockstep): the simulator does not step past frame ``i``
until the feedback for frame ``i`` has arrived, so a seed and a model give the same trajectory on
every run and machine speed does not matter. Feedback that does not come within
``feedback_timeout`` seconds raises :class:`FeedbackTimeoutError`, so a stalled pipeline never
hangs. A pipeline feeding a lockstep source must not wait for frame ``i + 1`` before it gives the
feedback for frame ``i`` (it never comes): micro-batches take the frames that are there.

Simulated time always advances 1/50 s per step (CarRacing's physics rate); ``fps`` only sets how
fast that happens on the wall clock in real-time mode.

>>> from fastviz.sim import CarRacingSource
>>> with CarRacingSource(seed=0, realtime=False, max_steps=3) as sim:  # doctest: +SKIP
...     for i, frame in enumerate(sim.frames()):
...         sim.feedback(i, 0.0)                    # the model's steering for frame i, rad
...     sim.report()["steps"]
3
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Iterator

import numpy as np

from .errors import FastvizError, InputError, positive_number

__all__ = ["INSTALL_HINT", "SIM_FPS", "STEER_LIMIT", "CarRacingSource", "FeedbackTimeoutError"]

#: CarRacing's physics rate: every step advances the simulation by 1/50 s.
SIM_FPS = 50.0
#: The front-wheel joint limit of CarRacing's car, rad; steering is clipped to +- this.
STEER_LIMIT = 0.4
#: CarRacing's camera zoom-in animation at the start of an episode, s.
ZOOM_SECONDS = 1.0
#: What to install for the simulator (gymnasium with Box2D and pygame).
INSTALL_HINT = "pip install 'fastviz[sim]'"


class FeedbackTimeoutError(FastvizError, TimeoutError):
    """A lockstep :class:`CarRacingSource` waited longer than its ``feedback_timeout`` for the
    model's output for a frame."""


def _make_env(max_episode_steps: int):
    """``gym.make("CarRacing-v3")`` with no rendering window; InputError naming the install
    command when gymnasium, Box2D or pygame is missing."""
    try:
        import gymnasium as gym
    except ImportError:
        raise InputError(f"the CarRacing simulator needs gymnasium, which is not installed: {INSTALL_HINT}") from None
    try:
        import Box2D  # noqa: F401  (CarRacing's physics)
    except ImportError:
        raise InputError(f"the CarRacing simulator needs Box2D (box2d), which is not installed: {INSTALL_HINT}") from None
    try:
        return gym.make("CarRacing-v3", render_mode=None, max_episode_steps=max_episode_steps)
    except (ImportError, gym.error.DependencyNotInstalled) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"the CarRacing simulator cannot start ({detail}): {INSTALL_HINT}") from None


class CarRacingSource:
    """A model drives CarRacing-v3 in closed loop; a live frame source for :mod:`fastviz.stream`.

    One source is one episode on one track (the track layout follows from ``seed``). Iterate
    :meth:`frames` in one thread; call :meth:`feedback` (from any thread) with the model's
    steering for each frame, in frame order; :meth:`close` when done.

    Parameters
    ----------
    seed : int
        Gymnasium reset seed, ``>= 0``; it fixes the track.
    max_steps : int, optional
        Stop after this many controlled steps (= frames yielded); ``None``: run until the lap is
        complete or the car leaves the playfield (Gymnasium's default 1,000-step limit is lifted).
    realtime : bool
        ``True``: step at ``fps`` on the wall clock with the newest steering (``live = True``).
        ``False``: lockstep, wait for each frame's feedback (``live = False``, deterministic).
    fps : float
        Frames per second on the wall clock in real-time mode (and the source's ``fps``). The
        simulation itself always advances 1/50 s per step, so any other value than 50 runs the
        world slower or faster than real time.
    speed : float
        Target speed of the throttle/brake controller, simulator units per second.
    skip_zoom : bool
        Step through the first second (the camera's zoom-in animation) with a zero action before
        the first frame, as the drive logs do; ``False`` yields those frames too.
    feedback_timeout : float
        Lockstep only: seconds to wait for a frame's feedback before :class:`FeedbackTimeoutError`.

    Attributes
    ----------
    fps : float
        ``fps`` as given.
    live : bool
        ``realtime`` as given.
    env : gymnasium.Env or None
        The simulator (``None`` once closed).

    Raises
    ------
    InputError
        For a bad argument; or when gymnasium, Box2D or pygame is missing (one line naming
        ``pip install 'fastviz[sim]'``).
    """

    def __init__(self, seed: int = 0, *, max_steps: int | None = None, realtime: bool = True, fps: float = SIM_FPS,
                 speed: float = 25.0, skip_zoom: bool = True, feedback_timeout: float = 30.0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise InputError(f"seed must be an int >= 0, got {seed!r}")
        if max_steps is not None and (
            isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1
        ):
            raise InputError(f"max_steps must be an int >= 1 or None, got {max_steps!r}")
        for name, flag in (("realtime", realtime), ("skip_zoom", skip_zoom)):
            if not isinstance(flag, bool):
                raise InputError(f"{name} must be True or False, got {flag!r}")
        self.seed = int(seed)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.fps = positive_number("fps", fps)
        self.live = realtime
        self.speed = positive_number("speed", speed)
        self.skip_zoom = skip_zoom
        self.feedback_timeout = positive_number("feedback_timeout", feedback_timeout)

        self._cond = threading.Condition()  # guards the feedback and report state below
        self._env_lock = threading.Lock()  # env.step vs env.close from another thread
        self._closed = False
        self._started = False
        self._yielded = 0  # frames handed out
        self._fb_index = -1  # newest frame with feedback
        self._steer = 0.0  # newest usable prediction, clipped, rad
        self._steer_index = -1  # the frame it belongs to
        self._predictions = 0
        self._lag_sum = 0
        self._lag_n = 0
        self._stats = {"steps": 0, "tiles_visited": 0, "tiles_total": 0, "off_track_steps": 0, "episode_reward": 0.0,
                       "lap_complete": False, "ended_by": None, "late_steps": 0, "wall_s": 0.0}

        # -1: no TimeLimit wrapper; max_steps is counted here, after the zoom.
        self.env = _make_env(max_episode_steps=-1)
        try:
            self._obs, _ = self.env.reset(seed=self.seed)
        except BaseException:
            self.env.close()
            raise
        self._stats["tiles_total"] = len(self.env.unwrapped.track)

    # --- the LiveSource protocol ---------------------------------------------------------------

    def frames(self) -> Iterator[np.ndarray]:
        """The episode's observations, one per controlled step.

        Yields
        ------
        numpy.ndarray
            uint8 ``(96, 96, 3)`` RGB, a fresh copy each time. Frame ``i`` is the observation the
            steering for step ``i`` is chosen from (the drive logs' convention); frame 0 is the
            one after the zoom-in (``skip_zoom``).

        The generator ends when the lap is complete, the car leaves the playfield, ``max_steps``
        steps are done or :meth:`close` is called; a source runs one episode, so a second call
        (and any call after :meth:`close`) yields nothing.

        Raises
        ------
        FeedbackTimeoutError
            Lockstep only: no feedback for the last frame within ``feedback_timeout`` seconds.
        """
        with self._cond:
            if self._started or self._closed:
                return
            self._started = True
        ended = None
        try:
            obs = self._obs
            self._obs = None
            if self.skip_zoom:
                while self._sim_time() < ZOOM_SECONDS - 1e-9:  # camera zoom-in: stand still
                    ended, obs = self._step(None)
                    if ended:
                        return
            period = 1.0 / self.fps
            t0 = slot = time.monotonic()
            i = 0
            while True:
                with self._cond:
                    if self._closed:  # close() while the last step ran
                        ended = "closed"
                        return
                    self._yielded = i + 1
                yield np.array(obs, dtype=np.uint8, order="C", copy=True)
                if self.live:
                    slot += period
                    if not self._sleep_until(slot):
                        ended = "closed"
                        return
                    if time.monotonic() - slot > period:  # behind by more than a frame: restart the schedule
                        with self._cond:
                            self._stats["late_steps"] += 1
                        slot = time.monotonic()
                elif not self._wait_feedback(i):
                    ended = "closed"
                    return
                with self._cond:
                    steer = self._steer
                    if self._steer_index >= 0:
                        self._lag_sum += i - self._steer_index
                        self._lag_n += 1
                ended, obs = self._step(steer)
                with self._cond:
                    self._stats["wall_s"] = time.monotonic() - t0
                if ended:
                    return
                i += 1
        except FeedbackTimeoutError:
            ended = "feedback-timeout"
            raise
        finally:
            with self._cond:
                # a consumer that stops iterating (GeneratorExit) also ends the episode
                if self._stats["ended_by"] is None:
                    self._stats["ended_by"] = ended or "closed"
                self._closed = True  # one episode per source: a later frames() yields nothing

    def feedback(self, index: int, prediction: float | None) -> None:
        """The model's output for frame ``index``: the steering of the next steps.

        Parameters
        ----------
        index : int
            The frame (0-based, in the order :meth:`frames` yielded them). Call in frame order;
            feedback for a frame older than one already answered is ignored.
        prediction : float or None
            Steering angle in radians, positive = right (the bundled model's output); clipped to
            +-0.4. ``None`` or a non-finite value: no prediction for this frame (a dropped or
            failed frame) -- the frame counts as answered and the previous steering stays.

        Raises
        ------
        InputError
            If ``index`` is not a frame handed out yet, or ``prediction`` is not a number.
        """
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise InputError(f"feedback index must be an int, got {index!r}")
        value = None
        if prediction is not None:
            try:
                value = float(prediction)
            except (TypeError, ValueError):
                raise InputError(f"feedback prediction must be a number (steering, rad) or None, got {prediction!r}") from None
            if not math.isfinite(value):
                value = None
        with self._cond:
            if not 0 <= index < self._yielded:
                handed = f"frames 0..{self._yielded - 1} were" if self._yielded else "no frame was"
                raise InputError(f"feedback for frame {index}, but {handed} handed out")
            if index <= self._fb_index:
                return
            self._fb_index = int(index)
            if value is not None:
                self._steer = min(max(value, -STEER_LIMIT), STEER_LIMIT)
                self._steer_index = int(index)
                self._predictions += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the episode and release the simulator (``env.close()``); idempotent, thread-safe.

        A :meth:`frames` generator that is waiting or sleeping wakes and ends; :meth:`report` keeps
        working."""
        with self._cond:
            self._closed = True
            if self._stats["ended_by"] is None:
                self._stats["ended_by"] = "closed"
            self._cond.notify_all()
        with self._env_lock:
            env, self.env = self.env, None
            if env is not None:
                env.close()

    def __enter__(self) -> CarRacingSource:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # --- results --------------------------------------------------------------------------------

    def report(self) -> dict:
        """How the drive went so far (works during, after and after :meth:`close`).

        Returns
        -------
        dict
            ``seed``; ``steps`` (controlled steps done after the zoom; equals the frames yielded
            when the episode ended by itself, one less when :meth:`close` stopped it after a
            frame); ``frames`` (yielded); ``sim_s`` (``steps / 50``, simulated seconds);
            ``wall_s`` (wall-clock seconds from the first frame to the last step);
            ``tiles_visited`` / ``tiles_total`` (track tiles touched / on the track) and
            ``fraction`` (their ratio, in [0, 1]); ``off_track_s`` (simulated seconds after a step
            with no wheel on a track tile); ``episode_reward`` (Gymnasium's reward summed over
            every step, zoom included: +1000/N a new tile, -0.1 a step, -100 leaving the
            playfield); ``lap_complete``; ``ended_by`` (``"lap"``, ``"off-playfield"``,
            ``"max_steps"``, ``"closed"`` -- also when the consumer stopped iterating --,
            ``"feedback-timeout"`` after :class:`FeedbackTimeoutError`, or ``None`` while running); ``predictions`` (feedback calls with a usable prediction);
            ``mean_lag_frames`` (steps only: frame index of the step minus that of the prediction
            it used, averaged; 0 in lockstep; ``None`` before any prediction); ``late_steps``
            (real-time only: steps more than one frame period behind their slot).
        """
        with self._cond:
            s = dict(self._stats)
            total = s["tiles_total"]
            return {
                "seed": self.seed,
                "steps": s["steps"],
                "frames": self._yielded,
                "sim_s": s["steps"] / SIM_FPS,
                "wall_s": s["wall_s"],
                "tiles_visited": s["tiles_visited"],
                "tiles_total": total,
                "fraction": s["tiles_visited"] / total if total else 0.0,
                "off_track_s": s["off_track_steps"] / SIM_FPS,
                "episode_reward": s["episode_reward"],
                "lap_complete": s["lap_complete"],
                "ended_by": s["ended_by"],
                "predictions": self._predictions,
                "mean_lag_frames": self._lag_sum / self._lag_n if self._lag_n else None,
                "late_steps": s["late_steps"],
            }

    # --- internals ------------------------------------------------------------------------------

    def _sim_time(self) -> float:
        with self._env_lock:
            return float(self.env.unwrapped.t) if self.env is not None else math.inf

    def _step(self, steer: float | None) -> tuple[str | None, np.ndarray | None]:
        """One simulator step: ``steer`` (rad, right > 0) with the speed controller's pedals, or a
        zero action for ``None`` (the zoom, not counted). Returns ``(why the episode ended or
        None, observation)``."""
        with self._env_lock:
            if self.env is None or self._closed:
                return "closed", None
            u = self.env.unwrapped
            if steer is None:
                action = np.zeros(3)
            else:
                err = self.speed - float(np.hypot(*u.car.hull.linearVelocity))
                gas = min(max(0.1 * err, 0.0), 1.0)
                brake = min(max(-0.05 * err, 0.0), 0.6) if err < -2.0 else 0.0
                action = np.array([steer, gas, brake], dtype=np.float64)
            obs, reward, terminated, truncated, info = self.env.step(action)
            off = not any(w.tiles for w in u.car.wheels)
            tiles = int(u.tile_visited_count)
        ended = None
        if terminated or truncated:
            ended = "lap" if info.get("lap_finished") else "off-playfield"
        with self._cond:
            s = self._stats
            s["episode_reward"] += float(reward)
            s["tiles_visited"] = tiles
            if steer is not None:
                s["steps"] += 1
                s["off_track_steps"] += int(off)
                if ended is None and self.max_steps is not None and s["steps"] >= self.max_steps:
                    ended = "max_steps"
            if ended == "lap":
                s["lap_complete"] = True
            if ended is not None:
                s["ended_by"] = ended
        return ended, obs

    def _sleep_until(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic clock); ``False`` if closed meanwhile."""
        with self._cond:
            while not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)
            return False

    def _wait_feedback(self, index: int) -> bool:
        """Wait for frame ``index``'s feedback; ``False`` if closed meanwhile."""
        deadline = time.monotonic() + self.feedback_timeout
        with self._cond:
            while self._fb_index < index and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FeedbackTimeoutError(
                        f"CarRacing lockstep: no feedback for frame {index} within {self.feedback_timeout:g} s "
                        "(call feedback(index, prediction) for every frame, or use realtime=True)"
                    )
                self._cond.wait(left)
            return not self._closed
