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


# ----------------------------------------------------------------------------- bring your own model
class _HandMade(torch.nn.Module):
    """A trunk (conv, relu, conv, relu) then a head: global pool, flatten, linear."""

    def __init__(self, classes=4):
        super().__init__()
        from torch import nn

        self.conv1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))))


class _FunctionalHead(_HandMade):
    """The same, pooling and flattening by calls in forward() itself."""

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _final_node(net):
    from torchvision.models.feature_extraction import get_graph_node_names

    from branchy.models.trunk import default_final_node

    return default_final_node(net.eval(), get_graph_node_names(net.eval())[1])


@pytest.mark.parametrize("cls", [_HandMade, _FunctionalHead])
def test_the_default_final_node_is_where_the_trunk_ends_before_the_head(cls):
    """Not a node inside the head: the final exit is the whole head (pool + flatten + linear), and it reads the
    trunk's last activation with its spatial size."""
    from branchy.models import attach_exits

    torch.manual_seed(0)
    net = cls().eval()
    assert _final_node(net) == "act2"
    m = attach_exits(net, ["act1"], in_channels=3, image_size=(8, 8), num_classes=4).eval()
    assert [tuple(s) for s in m.branch_shapes] == [(4, 8, 8), (8, 4, 4)]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_exits(x)[-1], net(x))


def test_the_default_final_node_of_a_sequential_and_of_a_net_in_one_container():
    from torch import nn

    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    assert _final_node(seq) == "3"

    class Wrapped(nn.Module):  # everything in one child: no trunk group before the head, the node feeding fc
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))

        def forward(self, x):
            return self.body(x)

    assert _final_node(Wrapped()) == "body.2"


def test_torchvision_default_final_nodes_end_the_feature_trunk():
    import torchvision

    assert _final_node(torchvision.models.resnet18(num_classes=4)) == "layer4"
    assert _final_node(torchvision.models.squeezenet1_1(num_classes=4)) == "features"  # its head has a conv


@pytest.mark.parametrize("arch,final,nodes", [("mobilenetv3_small_050", "blocks", ["blocks.1", "blocks.3"]),
                                              ("efficientnet_b0", "bn2", ["blocks.2", "blocks.4"])])
def test_timm_models_get_exits_with_the_forward_features_boundary_as_final_node(arch, final, nodes):
    timm = pytest.importorskip("timm", reason="timm is optional (pip install 'branchy-study[timm]')")
    from branchy.models import attach_exits

    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=5).eval()  # no download
    assert _final_node(net) == final
    m = attach_exits(net, nodes, in_channels=3, image_size=(64, 64), num_classes=5).eval()
    assert len(m.branch_shapes[-1]) == 3  # the head (global pool, ..., classifier) is the final exit
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_exits(x)[-1], net(x))


TINY_TV = {"arch": "squeezenet1_1", "nodes": "features.5"}  # the smallest torchvision classifier (~0.7 M params)


def _saved_squeezenet(path, classes, seed=1):
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.get_model("squeezenet1_1", num_classes=classes).eval()
    torch.save(net.state_dict(), path)
    return net


def test_torchvision_backbone_starts_from_a_weights_file_and_records_its_sha256(tmp_path):
    import hashlib

    from branchy.models import BackboneConfig

    net = _saved_squeezenet(tmp_path / "sq.pt", 4)
    digest = hashlib.sha256((tmp_path / "sq.pt").read_bytes()).hexdigest()
    cfg = BackboneConfig("torchvision", options={**TINY_TV, "weights": str(tmp_path / "sq.pt")})
    assert cfg.options["weights_sha256"] == digest  # in every saved config: a changed file is another config
    m = cfg.build(in_channels=3, image_size=32, num_classes=4).eval()
    assert m.config.options["weights"] == str(tmp_path / "sq.pt") and m.config.options["weights_sha256"] == digest
    got = {}
    for part in [*(b for s in m.stages for b in s), m.exits[-1]]:  # the trunk's cuts and the final exit: the
        got.update(part.state_dict())                               # net's own modules, under their own names
    want = net.state_dict()
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_exits(x)[-1], net(x))
    # a checkpoint holds every weight: it loads after the initial file is gone, its config unchanged
    save_checkpoint(m, tmp_path / "m.pt")
    (tmp_path / "sq.pt").unlink()
    m2, meta = load_checkpoint(tmp_path / "m.pt")
    assert m2.config == m.config and meta["model_config"]["options"]["weights_sha256"] == digest
    with torch.no_grad():
        for a, b in zip(m.forward_exits(x), m2.forward_exits(x)):
            torch.testing.assert_close(a, b)


def test_a_weights_file_that_does_not_fit_says_why_and_how_to_fix_it(tmp_path):
    from branchy.models import BackboneConfig

    def refused(exc, phrase, path, classes=4, **extra):
        with pytest.raises(exc) as e:
            build_model("torchvision", in_channels=3, image_size=32, num_classes=classes, **TINY_TV,
                        weights=str(path), **extra)
        assert phrase in str(e.value) and str(path) in str(e.value), str(e.value)

    refused(FileNotFoundError, "does not exist: give the path of a state_dict file", tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match="none.pt' does not exist"):  # refused by the config, before work
        BackboneConfig("torchvision", options={**TINY_TV, "weights": str(tmp_path / "none.pt")})
    net = _saved_squeezenet(tmp_path / "sq4.pt", 4)
    refused(ValueError, "2 tensors of another shape (e.g. classifier.1.weight: (4, 512, 1, 1) in the file, "
                        "(3, 512, 1, 1) here; a classifier for another number of classes", tmp_path / "sq4.pt", 3)
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pt")
    refused(ValueError, "keys the net does not have (e.g. conv.weight)", tmp_path / "other.pt")
    refused(ValueError, "52 keys missing from the file (e.g. classifier.1.bias)", tmp_path / "other.pt")
    torch.save(net, tmp_path / "whole.pt")
    refused(ValueError, "holds Python objects, e.g. a whole model (torch.save(net)); save one with "
                        "torch.save(net.state_dict(), PATH)", tmp_path / "whole.pt")
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    refused(ValueError, "not a state_dict of tensors (it holds model, epoch; a training checkpoint?)",
            tmp_path / "ckpt.pt")
    refused(ValueError, "recorded with these options: the file changed since", tmp_path / "sq4.pt",
            weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="weights_sha256 pins a weights file: give the file too"):
        build_model("torchvision", in_channels=3, image_size=32, num_classes=4, **TINY_TV, weights_sha256="0" * 64)


def test_a_torchvision_checkpoint_of_0_2_still_loads_with_the_head_split_as_then(tmp_path):
    """0.2 ended the trunk at the node feeding the last layer; a squeezenet's head has a conv before it, so its
    0.2 checkpoint has other stage keys than 0.3's default split. It loads as it was trained, same logits."""
    from dataclasses import replace

    from branchy.models import build_model, legacy_final_node
    from branchy.train import load_checkpoint, save_checkpoint

    old = legacy_final_node("squeezenet1_1", 4)
    assert old != "features"  # 0.3's default ends the trunk at features
    torch.manual_seed(0)
    net = build_model("torchvision", in_channels=3, image_size=32, num_classes=4, **TINY_TV, final_node=old).eval()
    net.config = replace(net.config, options={**net.config.options, "final_node": None})  # as 0.2 recorded it
    save_checkpoint(net, tmp_path / "m.pt")
    back, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(net.forward_exits(x), back.forward_exits(x)):
            torch.testing.assert_close(a, b)
    assert back.config.options["final_node"] is None
