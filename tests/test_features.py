"""Feature extraction: order, flip TTA, normalisation, eval mode handling, no grad/inference leaks."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from csdn.eval.features import extract_features


class TinyNet(nn.Module):
    """Position-sensitive encoder (so a horizontal flip changes the feature), with dropout and BN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 6, 5))
        self.drop = nn.Dropout(p=0.5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(self.drop(self.body(x)))

    def encode_image(self, x):
        return self.forward(x)


def images(n=7):
    return torch.randn(n, 3, 4, 6, generator=torch.Generator().manual_seed(1))


class ImageTuples(torch.utils.data.Dataset):
    """Items shaped like the project's datasets: (image, label, cam, index)."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3, 1, i


def expected(net, x, flip):
    net.eval()
    with torch.no_grad():
        f = net(x)
        if flip:
            f = (f + net(torch.flip(x, dims=[3]))) / 2
    return torch.nn.functional.normalize(f, dim=1)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 128])
def test_features_in_order_normalised_and_flip_averaged(flip, batch_size):
    net, x = TinyNet(), images()
    got = extract_features(net, ImageTuples(x), batch_size=batch_size, flip=flip, progress=False)
    assert got.shape == (7, 5) and got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(got, expected(TinyNet(), x, flip))


def test_raw_features_without_normalisation():
    net, x = TinyNet(), images()
    got = extract_features(net, TensorDataset(x), batch_size=4, flip=True, normalize=False, progress=False)
    net.eval()
    with torch.no_grad():
        raw = (net(x) + net(torch.flip(x, dims=[3]))) / 2
    torch.testing.assert_close(got, raw)
    assert not torch.allclose(got.norm(dim=1), torch.ones(7))


def test_flip_changes_features_of_asymmetric_images():
    net, x = TinyNet(), images()
    plain = extract_features(net, TensorDataset(x), flip=False, progress=False)
    flipped = extract_features(net, TensorDataset(x), flip=True, progress=False)
    assert not torch.allclose(plain, flipped)
    # A left-right symmetric image has the same feature with or without flip.
    sym = torch.cat([x[..., :3], torch.flip(x[..., :3], dims=[3])], dim=3)
    torch.testing.assert_close(
        extract_features(net, TensorDataset(sym), flip=True, progress=False),
        extract_features(net, TensorDataset(sym), flip=False, progress=False),
    )


def test_plain_tensor_items_and_bound_method():
    net, x = TinyNet(), images()

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    net.train()
    got = extract_features(net.encode_image, Plain(), batch_size=2, progress=False)
    torch.testing.assert_close(got, expected(TinyNet(), x, False))  # dropout off: eval mode was used
    assert net.training


def test_modes_restored_and_nothing_leaks():
    net = TinyNet()
    net.train()
    net.bn.eval()  # a mixed state (e.g. frozen BN) must come back as it was
    assert torch.is_grad_enabled()
    got = extract_features(lambda b: net(b), TensorDataset(images()), progress=False, model=net)
    assert net.training and net.body.training and not net.bn.training
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert not torch.is_autocast_enabled()
    assert not got.requires_grad and not got.is_inference()
    (got * 2).sum()  # usable in ordinary code
    w = torch.ones(5, requires_grad=True)
    (got @ w).sum().backward()  # and in autograd
    assert w.grad is not None


def test_progress_bar_runs(capsys):
    extract_features(TinyNet(), TensorDataset(images()), batch_size=2, progress=True, desc="gallery")
    assert "gallery" in capsys.readouterr().err


def test_bad_input_is_rejected():
    net = TinyNet()
    with pytest.raises(ValueError, match="empty"):
        extract_features(net, TensorDataset(torch.zeros(0, 3, 4, 6)), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(net, TensorDataset(images()), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="float image batches"):
        extract_features(net, TensorDataset(torch.zeros(2, 3, 4, 6, dtype=torch.uint8)), progress=False)
    with pytest.raises(TypeError, match="first element is the image tensor"):
        extract_features(net, [("not an image", 1)], progress=False)
    with pytest.raises(ValueError, match=r"encode must return a \(7, D\) tensor"):
        extract_features(lambda b: b, TensorDataset(images()), progress=False)
    assert torch.is_grad_enabled()
