"""What ``import fastviz`` and the CPU paths load: no ``numba.cuda`` module (issue 14, item 6).

``numba.cuda`` (53 modules) used to load at import, because the kernel modules defined their
``@cuda.jit`` kernels at module level; it loaded even where there is no GPU. The kernels now live
in ``fastviz.kernels._<module>_cuda``, imported by the ``"cuda"`` backend on its first launch.

Each check runs in a fresh interpreter (this process has long since imported numba, and the
test conftest turns the CUDA simulator on): with ``NUMBA_ENABLE_CUDASIM`` unset, as a user's
CPU-only run has it, and once with it set, to show that the ``"cuda"`` backend still loads its
kernel and gives the reference's values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

#: Printed by a child as its last line of stdout: the ``numba.cuda`` modules it has loaded.
REPORT = textwrap.dedent(
    """
    import json as _json, sys as _sys
    print(_json.dumps(sorted(m for m in _sys.modules if m.startswith("numba.cuda"))))
    """
)


def _child(script: str, cwd, cudasim: bool = False, timeout: float = 300) -> list[str]:
    """Run ``script`` then :data:`REPORT` in a fresh interpreter (``NUMBA_ENABLE_CUDASIM`` set
    only if ``cudasim``); return the ``numba.cuda`` modules it had loaded at the end."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if cudasim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script) + REPORT],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_fastviz_loads_no_numba_cuda(tmp_path):
    loaded = _child(
        """
        import sys
        import fastviz
        assert "fastviz.kernels.masking" in sys.modules and "numba" in sys.modules  # the kernels did load
        """,
        tmp_path,
    )
    assert loaded == []


CPU_RUN = """
    import sys
    import torch
    from torch import nn
    import fastviz as fv
    from fastviz import kernels as K
    from fastviz.methods.perturbation import window_grids

    def close(got, want, what):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 8 * 11, 1),
    ).eval()
    x = torch.rand(2, 3, 17, 23)

    # the methods, each kernel backend that runs on CPU tensors
    occ = {}
    for backend in ("torch", "cpu", "auto"):
        for incremental in (False, True):
            occ[backend, incremental] = fv.occlusion(net, x, windows=(3, 5), stride=2, backend=backend,
                                                     incremental=incremental)
    ref = occ["torch", False]
    assert ref.shape == (2, 17, 23) and ref.abs().max() > 0
    for key, got in occ.items():
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(), msg=lambda m: f"{key}: {m}")
    vbp = fv.visual_backprop(net, x, backend="torch")
    assert vbp.shape == (2, 17, 23) and vbp.min() == 0 and vbp.max() == 1
    for backend in ("cpu", "auto"):
        close(fv.visual_backprop(net, x, backend=backend), vbp, f"visual_backprop {backend}")
    cam = fv.grad_cam(net, x)
    assert cam.shape == (2, 17, 23) and torch.isfinite(cam).all()
    sal = fv.saliency(net, x)
    assert sal.shape == (2, 17, 23) and sal.abs().max() > 0

    # the kernels, directly: "cpu" and "auto" equal the torch references
    xb = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    frame = torch.tensor([0, 1, 1])
    boxes = torch.tensor([[0, 0, 3, 3], [2, 4, 9, 11], [5, 5, 5, 8]])
    want = K.masked_batch(xb, frame, boxes, -1.0, backend="torch")
    assert (want == -1.0).sum() == 3 * 3 * 3 + 3 * 7 * 7  # the two non-empty windows, filled
    clean = torch.rand(2, 4, 6, 7)
    region_at = torch.tensor([[-1, -1], [2, 3], [0, 0]])
    patch, patch_at = torch.rand(3, 4, 2, 2), torch.tensor([[0, 0], [3, 4], [5, 6]])
    patched = K.assemble(clean, frame, region_at, (4, 4), patch, patch_at, pad=-2.0, backend="torch")
    wboxes, scale = K.window_table(window_grids(9, 11, (3, 5), 2))
    scores = torch.randn(2, len(wboxes))
    omap = K.occlusion_map(scores, wboxes, scale, 2, 9, 11, backend="torch")
    smaps, covered = K.scale_maps(scores, wboxes, scale, 2, 9, 11, backend="torch")
    geometry = [K.ConvGeometry(kernel=3, stride=2, padding=1, dilation=1, in_size=(9, 11)),
                K.ConvGeometry(kernel=3, stride=1, padding=0, dilation=1, in_size=(5, 6))]
    means = [torch.rand(2, 1, 5, 6), torch.rand(2, 1, 3, 4)]
    chain = K.upscale_chain(means, geometry, backend="torch")
    for backend in ("cpu", "auto"):
        assert torch.equal(K.masked_batch(xb, frame, boxes, -1.0, backend=backend), want), backend
        assert torch.equal(K.assemble(clean, frame, region_at, (4, 4), patch, patch_at, pad=-2.0, backend=backend),
                           patched), backend
        close(K.occlusion_map(scores, wboxes, scale, 2, 9, 11, backend=backend), omap, f"occlusion_map {backend}")
        got_maps, got_covered = K.scale_maps(scores, wboxes, scale, 2, 9, 11, backend=backend)
        close(got_maps, smaps, f"scale_maps {backend}")
        assert torch.equal(got_covered, covered), backend
        close(K.upscale_chain(means, geometry, backend=backend), chain, f"upscale_chain {backend}")

    # "cuda" on CPU tensors without the simulator: a clear error, decided without numba.cuda
    try:
        K.masked_batch(xb, frame, boxes, -1.0, backend="cuda")
    except ValueError as e:
        assert "NUMBA_ENABLE_CUDASIM" in str(e), e
    else:
        raise AssertionError("backend='cuda' ran on CPU tensors without the simulator")

    # the default overlay (saliency) of the bundled model on the bundled drive log
    result = fv.write_overlay(sys.argv[1], model=fv.models.load("pilotnet-carracing"), max_frames=2, progress=False)
    assert result.frames == 2 and result.method == "saliency"
"""


def test_cpu_methods_and_kernels_load_no_numba_cuda(tmp_path):
    out = tmp_path / "overlay.mkv"
    script = f"import sys; sys.argv[1:] = [{str(out)!r}]\n" + textwrap.dedent(CPU_RUN)
    loaded = _child(script, tmp_path)
    assert out.stat().st_size > 0
    assert loaded == []


def test_cuda_backend_still_loads_its_kernel_in_the_simulator(tmp_path):
    loaded = _child(
        """
        import sys
        import torch
        import fastviz as fv
        from fastviz import kernels as K

        assert not [m for m in sys.modules if m.startswith("numba.cuda")], "numba.cuda loaded at import"
        assert "fastviz.kernels._masking_cuda" not in sys.modules
        torch.manual_seed(0)
        x = torch.rand(2, 3, 9, 11)
        frame = torch.tensor([0, 1, 1])
        boxes = torch.tensor([[0, 0, 3, 3], [2, 4, 9, 11], [5, 5, 5, 8]])
        base = x.mean(dim=(2, 3), keepdim=True)
        with K.use_threads_per_block(32):
            got = K.masked_batch(x, frame, boxes, base, backend="cuda")
        want = K.masked_batch(x, frame, boxes, base, backend="torch")
        assert not torch.equal(want, x[frame])  # the windows changed something
        assert torch.equal(got, want)
        assert "fastviz.kernels._masking_cuda" in sys.modules
        assert "fastviz.kernels._patches_cuda" not in sys.modules  # each kernel on its own first use
        """,
        tmp_path,
        cudasim=True,
    )
    assert "numba.cuda" in loaded and "numba.cuda.simulator" in loaded
