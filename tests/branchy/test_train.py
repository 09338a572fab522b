import pandas as pd
import pytest
import torch

from branchy.train import TrainConfig, load_checkpoint, save_checkpoint, train
from branchy.train.schemes import resolve_optimizer
from branchy.models import BackboneConfig, build_model
from tests.helpers import make_splits

NET = BackboneConfig("b-lenet", exits=(0, 1))


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=3e-3, device="cpu", augment_shift=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_is_deterministic_learns_and_writes_history(toy_splits, tmp_path):
    r1 = train(_cfg(), NET, toy_splits, out_dir=tmp_path / "a", progress=False)
    r2 = train(_cfg(), NET, toy_splits, out_dir=tmp_path / "b", progress=False)
    r3 = train(_cfg(seed=1), NET, toy_splits, progress=False)
    assert r1.model.fingerprint() == r2.model.fingerprint() != r3.model.fingerprint()
    h = pd.read_csv(tmp_path / "a" / "history.csv")
    assert set(h.columns) >= {"epoch", "exit", "train_accuracy", "train_loss", "calib_accuracy", "calib_loss"}
    assert len(h) == 2 * 3
    assert h[h.epoch == 1].calib_accuracy.max() > 0.5  # 4 classes: chance is 0.25
    m, meta = load_checkpoint(tmp_path / "a" / "model.pt")
    assert meta["train_config"]["epochs"] == 2 and meta["dataset_info"]["name"] == "toy"
    x = toy_splits.test.batch(torch.arange(5))[0]
    for a, b in zip(m.forward_exits(x), r1.model.forward_exits(x)):
        assert torch.equal(a, b)


def test_exit_weights_change_training(toy_splits):
    a = train(_cfg(epochs=1), NET, toy_splits, progress=False).model
    b = train(_cfg(epochs=1, exit_weights=(0.0, 0.0, 1.0)), NET, toy_splits, progress=False).model
    # zero weight: the first branch head keeps its initial weights
    init = build_model("b-lenet", exits=(0, 1), num_classes=4)
    torch.manual_seed(0)
    init = build_model("b-lenet", exits=(0, 1), num_classes=4)
    for p0, pb in zip(init.exits[0].parameters(), b.exits[0].parameters()):
        assert torch.equal(p0, pb)
    assert a.fingerprint() != b.fingerprint()


def test_trunk_first_scheme_runs(toy_splits):
    r = train(_cfg(scheme="trunk-first", trunk_epochs=1, epochs=1), NET, toy_splits, progress=False)
    assert list(r.history.phase.unique()) == ["trunk", "joint"]


@pytest.mark.parametrize("kw,msg", [(dict(epochs=0), "epochs"), (dict(optimizer="lion"), "optimizer"),
                                    (dict(scheme="boost"), "scheme"), (dict(exit_weights=(1, -1, 1)), ">= 0")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _cfg(**kw)


def test_wrong_number_of_weights(toy_splits):
    with pytest.raises(ValueError, match="2 values but b-lenet .* has 3 exits"):
        train(_cfg(exit_weights=(1.0, 1.0)), NET, toy_splits, progress=False)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    p = save_checkpoint(build_model("b-lenet"), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="holds a b-lenet .* not the expected b-resnet"):
        load_checkpoint(p, expect="b-resnet")
    other = build_model("b-lenet", exits=(0, 1)).config
    with pytest.raises(ValueError, match="holds a b-lenet"):
        load_checkpoint(p, expect=other)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable branchy checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="branchy train"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("scheme", ["boostnet", "ic-only", "ztw"])
def test_other_schemes_train_round_trip_and_respect_frozen_trunk(scheme, toy_splits, tmp_path):
    kw = dict(scheme=scheme, epochs=2)
    if scheme != "boostnet":
        kw["trunk_epochs"] = 1
    r = train(_cfg(**kw), NET, toy_splits, out_dir=tmp_path, progress=False)
    phases = list(r.history.phase.unique())
    assert phases == {"boostnet": ["joint"], "ic-only": ["trunk", "exits"],
                      "ztw": ["trunk", "exits", "ensemble"]}[scheme]
    m, meta = load_checkpoint(tmp_path / "model.pt")
    assert m.config.chain == {"boostnet": "boost", "ic-only": "none", "ztw": "cascade"}[scheme]
    x = toy_splits.test.batch(torch.arange(6))[0]
    for a, b in zip(m.forward_exits(x), r.model.forward_exits(x)):
        assert torch.equal(a, b)
    if scheme != "boostnet":  # the trunk after the trunk phase is the trunk at the end
        h = r.history
        trunk_acc = h[(h.phase == "trunk") & (h.exit == 2)].calib_accuracy.iloc[-1]
        assert h[h.exit == 2].calib_accuracy.iloc[-1] == pytest.approx(trunk_acc)


def test_boosted_exits_add_up():
    from branchy.models.base import BOOST_T

    m = build_model("b-lenet", exits=(0, 1), num_classes=4, chain="boost").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        z = m.forward_exits(x)
        h, raw = x, []
        for k in range(3):
            h = m.run_stage(k, h)
            raw.append(m.exits[k](h))
    torch.testing.assert_close(z[1], raw[1] + BOOST_T * raw[0])
    torch.testing.assert_close(z[2], raw[2] + BOOST_T * z[1])


def test_frozen_schemes_need_a_trunk(toy_splits, tmp_path):
    with pytest.raises(ValueError, match="trunk_epochs >= 1 or an init_checkpoint"):
        train(_cfg(scheme="ic-only"), NET, toy_splits, progress=False)
    base = train(_cfg(epochs=1), NET, toy_splits, out_dir=tmp_path / "b", progress=False)
    r = train(_cfg(scheme="ic-only", epochs=1, init_checkpoint=str(tmp_path / "b" / "model.pt")), NET, toy_splits,
              progress=False)
    for a, b in zip(base.model.stages.parameters(), r.model.stages.parameters()):
        assert torch.equal(a, b)  # the trunk was taken and left frozen


def test_ic_only_trains_the_exits_of_a_user_built_net_on_its_frozen_pretrained_trunk(toy_splits, tmp_path):
    """Bring your own model: a plain network (here a small CNN standing in for a pretrained one) gets exits with
    attach_exits and goes to train() as it is; ic-only needs no trunk_epochs then, leaves every trunk weight as it
    was and trains the side exit; the checkpoint holds the weights (the net is no registered backbone)."""
    from torch import nn

    from branchy.models import attach_exits
    from branchy.train import load_checkpoint, read_checkpoint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model = attach_exits(net, ["1"], in_channels=1, image_size=(28, 28), num_classes=4, name="my-cnn")
    trunk = {k: v.clone() for k, v in model.stages.state_dict().items()}
    head = [p.clone() for p in model.exits[0].parameters()]
    r = train(_cfg(scheme="ic-only", epochs=1), model, toy_splits, out_dir=tmp_path / "m", progress=False)
    assert r.model is model and list(r.history.phase.unique()) == ["exits"]
    for k, v in model.stages.state_dict().items():
        assert torch.equal(v, trunk[k]), f"trunk weight {k} changed"
    assert any(not torch.equal(a, b) for a, b in zip(head, model.exits[0].parameters())), "the side exit did not learn"
    meta = read_checkpoint(tmp_path / "m" / "model.pt")
    assert meta["model_config"]["name"] == "my-cnn" and meta["backbone_config"] is None
    with pytest.raises(KeyError, match="unknown model 'my-cnn'"):
        load_checkpoint(tmp_path / "m" / "model.pt")  # not a registered backbone: load its weights into the net
    from branchy.train import load_weights

    fresh = attach_exits(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                                       nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)),
                         ["1"], in_channels=1, image_size=(28, 28), num_classes=4, name="my-cnn")
    load_weights(fresh, meta["state_dict"])
    x = toy_splits.test.batch(torch.arange(4))[0]
    for a, b in zip(model.eval().forward_exits(x), fresh.eval().forward_exits(x)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"the net given to train\(\) takes 1 channels of \(28, 28\) images and 4 "
                                         r"classes; the data has 1 channels of \(28, 28\) and 3 classes"):
        train(_cfg(scheme="ic-only", epochs=1), model, make_splits(classes=3), progress=False)


def test_boostnet_trains_with_sgd_unless_told_otherwise():
    import warnings

    assert TrainConfig().optimizer == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_optimizer(_cfg(scheme="boostnet")) == "sgd"
        assert resolve_optimizer(_cfg(scheme="boostnet", optimizer="sgd")) == "sgd"
        for scheme in ("joint", "trunk-first", "ic-only", "ztw"):
            assert resolve_optimizer(_cfg(scheme=scheme, trunk_epochs=1)) == "adam"
            assert resolve_optimizer(_cfg(scheme=scheme, trunk_epochs=1, optimizer="sgd")) == "sgd"
        assert resolve_optimizer(_cfg(optimizer="adam")) == "adam"
    with pytest.warns(UserWarning, match="gradient rescale .*no effect under Adam"):
        assert resolve_optimizer(_cfg(scheme="boostnet", optimizer="adam")) == "adam"
    from branchy.train.schemes import resolve_lr

    assert resolve_lr(_cfg(scheme="boostnet", lr=None)) == 0.05  # SGD's default rate, not Adam's
    assert resolve_lr(_cfg(lr=None)) == 3e-3 and resolve_lr(_cfg(scheme="boostnet", lr=0.2)) == 0.2
