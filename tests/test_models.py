import pytest
import torch

from branchy.models import build_model, list_models
from branchy.train import joint_loss, load_checkpoint, save_checkpoint

SMALL = {"b-resnet": {"depth": 8}, "b-densenet": {"depth": 10}, "b-resnext": {}, "b-alexnet": {"width": 0.25},
         "b-lenet": {}, "torchvision": {"arch": "resnet18", "nodes": ["layer1", "layer3"]}}


def _build(name, c, s, classes):
    if name == "torchvision" and c != 3:
        pytest.skip("torchvision models take 3-channel input")
    return build_model(name, in_channels=c, image_size=s, num_classes=classes, **SMALL[name])
SHAPES = [(1, 28), (3, 32)]


def test_every_backbone_is_tested():
    assert set(list_models()) == set(SMALL)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_exits_shapes_and_stages(name, shape):
    c, s = shape
    m = _build(name, c, s, 7).eval()
    x = torch.randn(3, c, s, s)
    logits, feats = m.forward_exits(x, return_features=True)
    assert len(logits) == len(feats) == m.num_exits >= 2
    assert all(z.shape == (3, 7) for z in logits)
    # running stage k and exit k alone gives the same answers
    h = x
    for k in range(m.num_exits):
        h = m.run_stage(k, h)
        torch.testing.assert_close(h, feats[k])
        torch.testing.assert_close(m.run_exit(k, h), logits[k])
    torch.testing.assert_close(m(x), logits[-1])


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_reach_every_exit_and_stage(name, shape):
    c, s = shape
    m = _build(name, c, s, 5).train()
    x, y = torch.randn(4, c, s, s), torch.randint(0, 5, (4,))
    loss, _ = joint_loss(m.forward_exits(x), y, torch.ones(m.num_exits))
    loss.backward()
    for k in range(m.num_exits):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.exits[k].parameters()), f"exit {k}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.stages[k].parameters()), f"stage {k}"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", SHAPES)
def test_checkpoint_round_trip_gives_identical_logits(name, shape, tmp_path):
    c, s = shape
    m = _build(name, c, s, 10)
    # move BN statistics away from their init so buffers matter
    m.train()
    with torch.no_grad():
        m.forward_exits(torch.randn(8, c, s, s) * 3 + 1)
    m.eval()
    path = save_checkpoint(m, tmp_path / "m.pt")
    m2, meta = load_checkpoint(path)
    assert meta["fingerprint"] == m.fingerprint() == m2.fingerprint()
    x = torch.randn(2, c, s, s)
    for a, b in zip(m.forward_exits(x), m2.forward_exits(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_weights_are_applied(name, shape):
    """A known flaw of the original BranchyNet code: the weights were ignored."""
    c, s = shape
    m = _build(name, c, s, 5).train()
    x, y = torch.randn(4, c, s, s), torch.randint(0, 5, (4,))
    w = torch.ones(m.num_exits)
    w[0] = 0.0
    loss, ce = joint_loss(m.forward_exits(x), y, w)
    torch.testing.assert_close(loss, (w * ce).sum())
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.exits[0].parameters())
    m.zero_grad()
    w2 = torch.ones(m.num_exits)
    w2[0] = 3.0
    loss2, ce2 = joint_loss(m.forward_exits(x), y, w2)
    torch.testing.assert_close(loss2, (w2 * ce2).sum())
    assert not torch.isclose(loss2, loss)


def test_branch_heads_cost_less_when_earlier_has_more_layers():
    m = build_model("b-resnet", in_channels=3, image_size=32, num_classes=10, depth=20)
    convs = [sum(isinstance(l, torch.nn.Conv2d) for l in h.modules()) for h in m.exits[:-1]]
    assert convs == sorted(convs, reverse=True) and convs[0] >= 1


def test_bad_exits_and_input_shape():
    with pytest.raises(ValueError, match="exits must be increasing"):
        build_model("b-lenet", exits=(1, 0))
    with pytest.raises(ValueError, match="exits must be increasing"):
        build_model("b-lenet", exits=(2,))
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("b-resnet", depth=21)
    m = build_model("b-lenet")
    with pytest.raises(ValueError, match=r"expects input \[B, 1, 28, 28\]"):
        m.forward_exits(torch.randn(2, 3, 32, 32))


def test_exits_at_named_nodes_keep_the_network_intact():
    import torchvision

    from branchy.models import attach_exits
    from branchy.registry import UnknownNameError

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    m = attach_exits(net, ["layer1", "layer2"], in_channels=3, image_size=(32, 32), num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_exits(x)[-1], net(x))
    assert [tuple(s) for s in m.branch_shapes[:2]] == [(64, 8, 8), (128, 4, 4)]
    with pytest.raises(UnknownNameError, match="unknown node 'layer9'"):
        attach_exits(net, ["layer9"], in_channels=3, image_size=(32, 32), num_classes=10)
    with pytest.raises(ValueError, match="skip connection crosses the cut"):
        attach_exits(net, ["layer1.0.conv1"], in_channels=3, image_size=(32, 32), num_classes=10)
    with pytest.raises(ValueError, match="3-channel"):
        build_model("torchvision", in_channels=1, image_size=28)
