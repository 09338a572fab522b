import pytest
import torch

from branchy.models import build_model, list_models
from branchy.train import load_checkpoint, save_checkpoint
from branchy.train.loop import joint_loss

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
    from branchy.core import UnknownNameError

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


# ----------------------------------------------------------------------------- ZTW chained exits
def _ztw(classes=4):
    torch.manual_seed(0)
    return build_model("b-resnet", depth=8, exits=(0, 1, 2), num_classes=classes, chain="cascade",
                       ensemble=True).eval()


def _input(m, n=5):
    return torch.randn(n, m.config.in_channels, *m.config.image_size)


def _raw_heads(m, x):
    h, raw = x, []
    for k in range(m.num_exits):
        h = m.run_stage(k, h)
        raw.append(m.exits[k](h))
    return raw


def _layer_norm(v):  # LayerNorm without affine part, by hand
    return (v - v.mean(1, keepdim=True)) / torch.sqrt(v.var(1, unbiased=False, keepdim=True) + 1e-5)


def test_fresh_ztw_ensemble_is_the_plain_geometric_mean():
    m = _ztw()
    assert m.ens_w.shape == (4, 4) and torch.equal(m.ens_w, torch.zeros(4, 4))
    x = _input(m)
    with torch.no_grad():
        z = m.forward_exits(x)
        own = m.forward_exits(x, ensemble=False)
        raw = _raw_heads(m, x)
    for k in range(4):  # a fresh cascade (W_k = 0) changes nothing
        torch.testing.assert_close(own[k], raw[k])
    for k in range(3):  # p̂_k ∝ (Π_{i<=k} p_i)^(1/(k+1))
        p = [torch.softmax(r, 1) for r in raw[: k + 1]]
        geo = torch.ones_like(p[0])
        for q in p:
            geo = geo * q ** (1 / (k + 1))
        torch.testing.assert_close(torch.softmax(z[k], 1), geo / geo.sum(1, keepdim=True))
    torch.testing.assert_close(z[0], torch.log_softmax(raw[0], 1))
    torch.testing.assert_close(z[3], raw[3])  # the trunk's own classifier is not ensembled (as in ZTW)


def test_ztw_weights_are_exp_w_and_cascade_reads_the_normalised_previous_logits():
    m = _ztw()
    with torch.no_grad():
        m.ens_w.normal_(0, 0.7)
        m.ens_b.normal_(0, 0.5)
        for lin in m.cascade:
            lin.weight.normal_(0, 0.5)
    x = _input(m)
    with torch.no_grad():
        z = m.forward_exits(x)
        raw = _raw_heads(m, x)
    own = [raw[0]]
    for k in range(1, 4):
        own.append(raw[k] + _layer_norm(own[-1]) @ m.cascade[k].weight.T)
    logp = [torch.log_softmax(o, 1) for o in own]
    w, b = m.ens_w.detach(), m.ens_b.detach()
    for k in range(3):
        want = sum(torch.exp(w[k, i]) * logp[i] for i in range(k + 1)) / (k + 1) + b[k]
        torch.testing.assert_close(z[k], want)
    torch.testing.assert_close(z[3], own[3])
    # the cascade input is detached: exit 1's loss sends nothing to exit 0's head
    m.train()
    out = m.forward_exits(x, ensemble=False)
    out[1].sum().backward()
    assert all(p.grad is None for p in m.exits[0].parameters())
    assert m.cascade[1].weight.grad is not None


def test_chained_forward_exits_match_exit_by_exit_with_state():
    for chain, ens in (("boost", False), ("cascade", True)):
        torch.manual_seed(0)
        m = build_model("b-lenet", exits=(0, 1), num_classes=4, chain=chain, ensemble=ens).eval()
        if ens:
            with torch.no_grad():
                m.ens_w.normal_(0, 0.5)
                for lin in m.cascade:
                    lin.weight.normal_(0, 0.5)
        x = torch.randn(3, 1, 28, 28)
        with torch.no_grad():
            z = m.forward_exits(x)
            h, state = x, {"prev": None, "logp": {}}
            for k in range(m.num_exits):
                h = m.run_stage(k, h)
                torch.testing.assert_close(m.run_exit(k, h, state), z[k])
