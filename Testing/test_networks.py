"""The three networks: shapes at every shipped configuration, the paper's architecture, learning.

Each test has a known right answer: ResNet34's published parameter count, the MRB's concatenation
and residual identity, the deep paths' influence, a sphere the tiny segmenter must learn, and exact
equality after a weights round trip or a reseeded build.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from KidneyTumorSegLib.config import ModelConfig
from KidneyTumorSegLib.networks import (
    KIDNEY_CHANNEL,
    MultiScaleResBlock,
    build_segmenter,
    build_xy_localiser,
    build_z_localiser,
    count_parameters,
)
from KidneyTumorSegLib.networks.mrb_net import MRBNet, deep_path_key

# torchvision's resnet34 has 21,797,672 parameters, of which the 1000-class fc layer holds
# 512 * 1000 + 1000 = 513,000; the rest is the feature extractor.
RESNET34_FEATURES = 21_797_672 - 513_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread here: on the shared, oversubscribed CI cores two OpenMP threads spin-wait on
    each other and run these small convolutions several times slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _patch_shape(cfg) -> tuple[int, int, int]:
    """Tensor spatial shape (z, y, x) of the configured patch (given as x, y, z)."""
    x, y, z = cfg.patch_size_xyz
    return (z, y, x)


def _eval_forward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.inference_mode():
        return net(x)


# --- z-localiser -------------------------------------------------------------------------------


def test_z_localiser_paper_is_resnet34():
    torch.manual_seed(0)
    net = build_z_localiser(ModelConfig.paper().z_localiser)
    assert count_parameters(net.features) == RESNET34_FEATURES
    assert count_parameters(net) == RESNET34_FEATURES + 512 + 1  # one-logit head
    stage_widths = [stage[0].conv2.conv.out_channels for stage in list(net.features)[1:5]]
    assert stage_widths == [64, 128, 256, 512]
    assert [len(stage) for stage in list(net.features)[1:5]] == [3, 4, 6, 3]
    y = _eval_forward(net, torch.randn(2, 3, 256, 256))
    assert y.shape == (2,)
    assert torch.isfinite(y).all()


def test_z_localiser_accepts_small_and_odd_slices():
    torch.manual_seed(0)
    net = build_z_localiser(ModelConfig.tiny().z_localiser)
    for shape in [(1, 3, 32, 32), (3, 3, 45, 61)]:
        assert _eval_forward(net, torch.randn(shape)).shape == (shape[0],)


# --- xy-localiser ------------------------------------------------------------------------------


def test_xy_localiser_paper_odd_size():
    torch.manual_seed(0)
    net = build_xy_localiser(ModelConfig.paper().xy_localiser)
    y = _eval_forward(net, torch.randn(1, 1, 200, 168))  # 200 and 168 are not multiples of 16
    assert y.shape == (1, 1, 200, 168)
    assert torch.isfinite(y).all()


def test_xy_localiser_crop_is_aligned():
    """Padding is undone exactly where it belongs.

    A 37 x 37 crop of a 40 x 40 image with a zero border is padded (1 before, 2 after) back to the
    very same 40 x 40 tensor, so its logits must equal the full image's logits at the crop.
    """
    torch.manual_seed(0)
    net = build_xy_localiser(ModelConfig.tiny().xy_localiser)  # depth 3: multiples of 8
    assert _eval_forward(net, torch.randn(2, 1, 37, 53)).shape == (2, 1, 37, 53)
    x = torch.zeros(1, 1, 40, 40)
    x[..., 10:30, 12:28] = torch.rand(20, 16)
    y = _eval_forward(net, x)
    y_crop = _eval_forward(net, x[..., 1:38, 1:38])
    assert y_crop.shape == (1, 1, 37, 37)
    assert torch.allclose(y_crop, y[..., 1:38, 1:38], atol=1e-5)


# --- segmenter ---------------------------------------------------------------------------------


def test_segmenter_paper_patch(record_property):
    """One paper-size patch (128 x 128 x 80 at 1 mm), float32, inference mode; time is reported only."""
    cfg = ModelConfig.paper().segmenter
    torch.manual_seed(0)
    net = build_segmenter(cfg).eval()
    n_params = count_parameters(net)
    x = torch.randn(1, 1, *_patch_shape(cfg))
    assert x.shape == (1, 1, 80, 128, 128)
    start = time.perf_counter()
    with torch.inference_mode():
        y = net(x)
    seconds = time.perf_counter() - start
    record_property("segmenter_paper_forward_s", round(seconds, 2))
    record_property("segmenter_paper_params", n_params)
    print(f"paper segmenter: {n_params} parameters, one forward {seconds:.1f} s on {torch.get_num_threads()} threads")
    assert y.shape == (1, 2, 80, 128, 128)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["compact", "tiny"])
def test_reduced_configs_shapes(name):
    cfg = getattr(ModelConfig, name)()
    torch.manual_seed(0)
    z = build_z_localiser(cfg.z_localiser)
    xy = build_xy_localiser(cfg.xy_localiser)
    seg = build_segmenter(cfg.segmenter)
    assert _eval_forward(z, torch.randn(2, cfg.z_localiser.in_channels, 64, 48)).shape == (2,)
    assert _eval_forward(xy, torch.randn(2, 1, 50, 70)).shape == (2, 1, 50, 70)
    patch = _patch_shape(cfg.segmenter)
    y = _eval_forward(seg, torch.randn(1, 1, *patch))
    assert y.shape == (1, 2, *patch)
    assert torch.isfinite(y).all()


def test_segmenter_pads_and_crops_other_sizes():
    torch.manual_seed(0)
    net = build_segmenter(ModelConfig.tiny().segmenter)  # depth 3: divisor 4
    assert _eval_forward(net, torch.randn(1, 1, 19, 30, 33)).shape == (1, 2, 19, 30, 33)
    assert _eval_forward(net, torch.randn(2, 1, 8, 12, 16)).shape == (2, 2, 8, 12, 16)
    # A crop of a zero-bordered volume pads back to the same tensor: its logits are the full ones.
    x = torch.zeros(1, 1, 12, 16, 16)
    x[..., 3:9, 4:12, 4:12] = torch.rand(6, 8, 8)
    y = _eval_forward(net, x)
    y_crop = _eval_forward(net, x[..., 1:10, 1:14, :])  # 9 -> 12 (1 before, 2 after), 13 -> 16
    assert torch.allclose(y_crop, y[..., 1:10, 1:14, :], atol=1e-5)


# --- the multiple-scale residual block ---------------------------------------------------------


def test_mrb_concatenates_every_scale():
    torch.manual_seed(0)
    block = MultiScaleResBlock(3, 4, 8, n_convs=3).eval()
    assert len(block.cascade) == 3
    assert block.reducer.in_channels == 3 * 8
    assert block.reducer.kernel_size == (1, 1, 1)
    # The cascade is chained: each unit takes the previous one's output.
    assert [u.conv.in_channels for u in block.cascade] == [4, 8, 8]
    outputs, reducer_inputs = [], []
    for unit in block.cascade:
        unit.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone()))
    block.reducer.register_forward_pre_hook(lambda _m, inp: reducer_inputs.append(inp[0].clone()))
    with torch.no_grad():
        block(torch.randn(1, 4, 6, 8, 8))
    assert torch.equal(reducer_inputs[0], torch.cat(outputs, dim=1))


@pytest.mark.parametrize("in_channels", [8, 4])  # identity shortcut, then 1x1x1 projection
def test_mrb_has_residual_path(in_channels):
    torch.manual_seed(0)
    block = MultiScaleResBlock(3, in_channels, 8, n_convs=2).eval()
    with torch.no_grad():
        block.reducer.weight.zero_()
        block.reducer.bias.zero_()
        x = torch.randn(1, in_channels, 4, 6, 6)
        expected = F.leaky_relu(block.shortcut(x).clone(), 0.01)
        out = block(x)
    assert torch.allclose(out, expected, atol=1e-6)
    if in_channels != 8:
        assert block.shortcut.conv.kernel_size == (1, 1, 1)
    else:
        assert torch.allclose(out, F.leaky_relu(x, 0.01))


# --- deep paths --------------------------------------------------------------------------------


def test_deep_paths_exist_and_change_the_parameter_count():
    cfg = ModelConfig.compact().segmenter  # depth 4
    with_paths = build_segmenter(cfg)
    cfg.deep_paths = False
    without = build_segmenter(cfg)
    assert set(with_paths.deep_paths) == {deep_path_key(2, 0), deep_path_key(3, 0), deep_path_key(3, 1)}
    assert len(without.deep_paths) == 0
    assert count_parameters(with_paths) > count_parameters(without)
    stride_8 = with_paths.deep_paths[deep_path_key(3, 0)].up
    assert stride_8.stride == (8, 8, 8)
    assert (stride_8.in_channels, stride_8.out_channels) == (cfg.width * 8, cfg.width)


def test_deep_path_carries_bottleneck_gradient_to_the_output():
    torch.manual_seed(0)
    net: MRBNet = build_segmenter(ModelConfig.tiny().segmenter)  # depth 3: one path, bottleneck -> level 0
    path = net.deep_paths[deep_path_key(2, 0)]
    seen: dict[str, torch.Tensor] = {}
    net.encoders[-1].register_forward_hook(lambda _m, _i, out: seen.__setitem__("bottleneck", out))
    path.register_forward_hook(lambda _m, inp, out: seen.update(path_in=inp[0], path_out=out))
    x = torch.randn(1, 1, 12, 16, 16)
    y = net(x)
    assert seen["path_in"] is seen["bottleneck"]
    (grad_through_path,) = torch.autograd.grad(y.sum(), seen["path_out"], retain_graph=True)
    assert grad_through_path.abs().sum() > 0
    # Removing the path's contribution changes the output.
    with torch.no_grad():
        for p in path.parameters():
            p.zero_()
        assert not torch.allclose(net(x), y.detach())


# --- learning, weights round trip, determinism -------------------------------------------------


def _sphere_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A 32 x 32 x 20 volume: a 'kidney' sphere (r 7) holding a brighter 'tumour' sphere (r 3)."""
    z, y, x = torch.meshgrid(torch.arange(20.0), torch.arange(32.0), torch.arange(32.0), indexing="ij")
    kidney = (((z - 10) ** 2 + (y - 15) ** 2 + (x - 17) ** 2) <= 7**2).float()
    tumour = (((z - 11) ** 2 + (y - 17) ** 2 + (x - 19) ** 2) <= 3**2).float() * kidney
    noise = torch.randn(kidney.shape, generator=torch.Generator().manual_seed(1))
    image = 0.6 * kidney + 0.4 * tumour + 0.1 * noise
    return image[None, None], torch.stack([kidney, tumour])[None]


def _dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(2 * (pred * target).sum() / (pred.sum() + target.sum()).clamp_min(1e-6))


def test_tiny_segmenter_learns_a_sphere():
    torch.manual_seed(0)
    net = build_segmenter(ModelConfig.tiny().segmenter)
    image, target = _sphere_case()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _step in range(60):
        opt.zero_grad()
        logits = net(image)
        prob = torch.sigmoid(logits)
        inter = (prob * target).sum((2, 3, 4))
        denom = prob.sum((2, 3, 4)) + target.sum((2, 3, 4))
        loss = (1 - (2 * inter + 1) / (denom + 1)).mean() + F.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        opt.step()
        if _dice((prob[:, KIDNEY_CHANNEL] > 0.5).float(), target[:, KIDNEY_CHANNEL]) > 0.9:
            break  # learned; the final check below is on a fresh forward
    pred = (torch.sigmoid(_eval_forward(net, image)) > 0.5).float()
    assert _dice(pred[:, KIDNEY_CHANNEL], target[:, KIDNEY_CHANNEL]) > 0.8


def test_weights_round_trip(tmp_path):
    from KidneyTumorSegLib.weights import build_networks, load_bundle, networks_from_bundle, save_bundle

    cfg = ModelConfig.tiny()
    torch.manual_seed(3)
    nets = build_networks(cfg)
    for net in nets.values():  # move batch-norm statistics off their defaults so they are checked too
        net.train()
        with torch.no_grad():
            if net is nets["segmenter"]:
                net(torch.randn(1, 1, 8, 8, 8))
            elif net is nets["z_localiser"]:
                net(torch.randn(4, 3, 32, 32))
            else:
                net(torch.randn(4, 1, 16, 16))
        net.eval()
    path = save_bundle(tmp_path / "w.safetensors", cfg, {k: v.state_dict() for k, v in nets.items()})
    loaded = networks_from_bundle(load_bundle(path))
    inputs = {
        "z_localiser": torch.randn(2, 3, 40, 40),
        "xy_localiser": torch.randn(2, 1, 30, 27),
        "segmenter": torch.randn(1, 1, *_patch_shape(cfg.segmenter)),
    }
    for name, x in inputs.items():
        with torch.inference_mode():
            assert torch.equal(loaded[name](x), nets[name](x)), name


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("builder,part", [
    (build_z_localiser, "z_localiser"),
    (build_xy_localiser, "xy_localiser"),
    (build_segmenter, "segmenter"),
])
def test_builders_are_fresh_and_seed_deterministic(builder, part):
    cfg = getattr(ModelConfig.tiny(), part)
    torch.manual_seed(7)
    a = builder(cfg)
    torch.manual_seed(7)
    b = builder(cfg)
    c = builder(cfg)  # same process, RNG moved on: different weights, separate parameters
    assert _state_equal(a, b)
    assert not _state_equal(a, c)
    assert all(pa is not pb for pa, pb in zip(a.parameters(), b.parameters()))


def test_channels_last_and_autocast():
    cfg = ModelConfig.tiny()
    torch.manual_seed(0)
    cases = [
        (build_z_localiser(cfg.z_localiser), torch.randn(2, 3, 40, 36), torch.channels_last),
        (build_xy_localiser(cfg.xy_localiser), torch.randn(2, 1, 30, 27), torch.channels_last),
        (build_segmenter(cfg.segmenter), torch.randn(1, 1, 19, 30, 33), torch.channels_last_3d),
    ]
    for net, x, fmt in cases:
        ref = _eval_forward(net, x)
        net_cl = net.to(memory_format=fmt)
        assert torch.allclose(_eval_forward(net_cl, x.to(memory_format=fmt)), ref, atol=1e-4)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        assert y.shape == ref.shape
        assert torch.isfinite(y).all()
        assert torch.allclose(y.float(), ref, atol=0.1 * ref.abs().max().item() + 0.05)
