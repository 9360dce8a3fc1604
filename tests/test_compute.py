"""The compute path: how ``compute.precision`` / ``compute.memory_format`` resolve, and the bf16 path run on the
CPU (skipped, with the reason, where the CPU has no native bf16)."""

from __future__ import annotations

import copy

import pytest
import torch

import csdn.runtime as runtime
from csdn.clip.loader import ClipSource, load_clip
from csdn.data.records import INFRARED, VISIBLE
from csdn.errors import ConfigError
from csdn.eval.features import extract_features
from csdn.model.network import CSDNNet
from csdn.runtime import FP32, ComputeConfig, ComputePath, bf16_supported, compute_path
from csdn.train.reid_stage import ReIDStageConfig, reid_losses

CPU = torch.device("cpu")
NATIVE_BF16 = bf16_supported(CPU)
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")


@pytest.fixture
def bf16_cpu(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)


@pytest.fixture
def plain_cpu(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)


def test_auto_on_a_bf16_cpu_is_bf16_channels_last_for_resnets_only(bf16_cpu) -> None:
    auto = ComputeConfig()
    assert compute_path(auto, CPU, convolutional=True) == ComputePath("cpu", torch.bfloat16, True)
    assert compute_path(auto, CPU, convolutional=False) == ComputePath("cpu", None, False)  # transformers: fp32
    assert compute_path(ComputeConfig(precision="bf16"), CPU, convolutional=False).dtype == torch.bfloat16
    fp32 = compute_path(ComputeConfig(precision="fp32"), CPU, convolutional=True)
    assert fp32 == ComputePath("cpu", None, False) and fp32.identity() == {"precision": "fp32", "layout": "contiguous"}
    forced = compute_path(ComputeConfig(precision="fp32", memory_format="channels_last"), CPU, convolutional=False)
    assert forced.channels_last and forced.identity()["layout"] == "channels_last"


def test_auto_without_bf16_is_fp32_and_an_explicit_bf16_is_refused(plain_cpu) -> None:
    assert compute_path(ComputeConfig(), CPU, convolutional=True) == ComputePath("cpu", None, False)
    with pytest.raises(ConfigError, match="no native bf16.*precision=auto or fp32"):
        compute_path(ComputeConfig(precision="bf16"), CPU, convolutional=True)


def test_bad_choices_are_refused() -> None:
    with pytest.raises(ConfigError, match="compute.precision"):
        ComputeConfig(precision="fp16")
    with pytest.raises(ConfigError, match="compute.memory_format"):
        ComputeConfig(memory_format="nhwc")


def test_the_plain_path_changes_nothing() -> None:
    x = torch.randn(2, 3, 8, 4)
    assert FP32.images(x) is x
    with FP32.autocast():
        assert not torch.is_autocast_enabled("cpu")


def _network() -> tuple[CSDNNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    bundle = load_clip(ClipSource(arch="csdn-tiny-rn", pretrained=None, image_size=(64, 32)), CPU)
    net = CSDNNet(bundle.visual(), 4).train()
    g = torch.Generator().manual_seed(0)
    x_vis, x_ir = torch.randn(8, 3, 64, 32, generator=g), torch.randn(4, 3, 64, 32, generator=g)
    per_image = torch.arange(2).repeat_interleave(2)
    return net, x_vis, x_ir, torch.cat([per_image, per_image, per_image])


def _loss_and_grads(net: CSDNNet, path: ComputePath, x_vis, x_ir, labels) -> tuple[float, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    with path.autocast():
        out = net([(path.images(x_vis), VISIBLE), (path.images(x_ir), INFRARED)])
    assert all(t.dtype == torch.float32 for t in out)  # the losses read float32 outputs also under autocast
    loss = sum(reid_losses(out, labels, len(x_vis), None, ReIDStageConfig()).values())
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    return loss.item(), grads


@needs_bf16
def test_a_bf16_stage3_step_runs_on_the_cpu_and_agrees_with_fp32() -> None:
    """The path a GPU takes (bf16 autocast, channels-last), run on the CPU: finite, and within bf16's precision
    of the fp32 step (same weights, same batch)."""
    net, x_vis, x_ir, labels = _network()
    loss_32, grads_32 = _loss_and_grads(net, FP32, x_vis, x_ir, labels)
    loss_16, grads_16 = _loss_and_grads(net, ComputePath("cpu", torch.bfloat16, True), x_vis, x_ir, labels)
    assert torch.isfinite(grads_16).all()
    assert loss_16 == pytest.approx(loss_32, rel=0.05)
    cosine = torch.nn.functional.cosine_similarity(grads_16, grads_32, dim=0)
    assert cosine > 0.95


@needs_bf16
def test_bf16_feature_extraction_is_float32_and_close() -> None:
    net, x_vis, _, _ = _network()
    images = torch.utils.data.TensorDataset(x_vis)
    embed = lambda x: net.embed(x, VISIBLE)  # noqa: E731
    plain = extract_features(embed, images, progress=False, model=net)
    fast = extract_features(embed, images, progress=False, model=net, compute=ComputePath("cpu", torch.bfloat16, True))
    assert fast.dtype == torch.float32 and fast.shape == plain.shape
    assert torch.nn.functional.cosine_similarity(fast, plain).min() > 0.98


def _narrow_batchnorms(net: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.num_features <= 8]


def test_a_channels_last_cpu_path_runs_narrow_batchnorms_on_contiguous_tensors() -> None:
    """prepare() gives the tiny ResNet's 4- and 8-channel BatchNorms contiguous inputs (their CPU
    channels-last kernel is slow) and changes nothing else: same loss, gradients, running statistics and
    state-dict keys as the unprepared network on the same channels-last path; idempotent."""
    channels_last = ComputePath("cpu", None, True)
    net, x_vis, x_ir, labels = _network()
    prepared = copy.deepcopy(net)
    assert channels_last.prepare(channels_last.prepare(prepared)) is prepared
    narrow = _narrow_batchnorms(prepared)
    assert narrow and all(len(m._forward_pre_hooks) == len(m._forward_hooks) == 1 for m in narrow)
    assert not any(m._forward_hooks for m in prepared.modules() if m not in narrow)
    seen = []
    narrow[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    _, grads_contiguous = _loss_and_grads(copy.deepcopy(net), FP32, x_vis, x_ir, labels)
    loss, grads = _loss_and_grads(net, channels_last, x_vis, x_ir, labels)
    loss_prepared, grads_prepared = _loss_and_grads(prepared, channels_last, x_vis, x_ir, labels)
    assert seen == [True]  # the layer itself saw a contiguous tensor
    assert loss_prepared == pytest.approx(loss, rel=1e-5)
    # as close as the two layouts' float32 rounding is anyway (their kernels sum in different orders)
    rounding = (grads_contiguous - grads).abs().max()
    assert 0 < (grads_prepared - grads).abs().max() <= 2 * rounding
    for (name, a), (name_p, b) in zip(net.state_dict().items(), prepared.state_dict().items(), strict=True):
        assert name == name_p
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prepare_changes_nothing_off_a_channels_last_cpu_path() -> None:
    for path in (FP32, ComputePath("cpu", torch.bfloat16, False), ComputePath("cuda", torch.bfloat16, True)):
        net = _network()[0]
        path.prepare(net)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules()), path


def test_a_narrow_batchnorm_gives_channels_last_output_and_gradient() -> None:
    layer = ComputePath("cpu", None, True).prepare(torch.nn.BatchNorm2d(4))
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    plain = torch.nn.BatchNorm2d(4)
    x_plain = x.detach().clone().requires_grad_()
    torch.testing.assert_close(plain(x_plain), y.detach())
