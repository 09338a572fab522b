"""Training schemes as a registry: every plan is non-empty and each phase trains exactly what it claims."""
import pytest
import torch

from branchy.models import build_model
from branchy.train import SCHEMES, Phase, Scheme, plan, register_scheme
from branchy.train.loop import TrainConfig, run_phase


def _cfg(scheme: str, **kw) -> TrainConfig:
    base = dict(scheme=scheme, epochs=1, trunk_epochs=1,
                ensemble_epochs=1, batch_size=32, lr=1e-2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _model(scheme: Scheme):
    torch.manual_seed(0)  # b-resnet has batch norm: frozen modules must keep their running statistics
    return build_model("b-resnet", in_channels=1, image_size=(28, 28), num_classes=4, depth=8, chain=scheme.chain,
                       ensemble=scheme.ensemble)


def test_registry_lists_every_scheme_in_order_with_a_doc():
    assert SCHEMES.names() == ["joint", "trunk-first", "boostnet", "ic-only", "ztw"]
    assert all(SCHEMES.describe().values())
    import branchy.train.loop

    assert branchy.train.SCHEMES is SCHEMES
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("joint", "again")(lambda cfg, model, optim: [])
    with pytest.raises(KeyError, match="unknown training scheme 'boost'; known: joint, trunk-first, boostnet"):
        SCHEMES.get("boost")


@pytest.mark.parametrize("name", SCHEMES.names())
def test_plan_is_nonempty_and_well_formed(name):
    scheme = SCHEMES.get(name)
    model = _model(scheme)
    phases = plan(_cfg(name), model)
    assert phases and all(isinstance(p, Phase) for p in phases)
    names = dict(model.named_parameters())
    for p in phases:
        hash(p)  # frozen all the way down
        assert p.epochs >= 1 and p.trains and set(p.trains) <= set(names)
        assert len(p.exit_weights) == model.num_exits and any(w > 0 for w in p.exit_weights)
        for m in p.eval_modules:
            model.get_submodule(m)
    # with the trunk taken from a checkpoint, no scheme trains it first
    assert all(p.name != "trunk" for p in plan(_cfg(name, init_checkpoint="given.pt"), model))


def _claimed(model, phase_name: str) -> set[str]:
    """What each kind of phase must train, written out independently of the planners."""
    k = model.num_exits
    names = [n for n, _ in model.named_parameters()]
    return {
        "trunk": {n for n in names if n.startswith(("stages.", f"exits.{k - 1}."))},
        "exits": {n for n in names if n.startswith(("exits.", "cascade.")) and not n.startswith(f"exits.{k - 1}.")},
        "ensemble": {"ens_w", "ens_b"},
        "joint": set(names),
    }[phase_name]


@pytest.mark.parametrize("name", SCHEMES.names())
def test_each_phase_trains_exactly_the_parameters_it_claims(name, toy_splits):
    scheme = SCHEMES.get(name)
    model = _model(scheme)
    cfg = _cfg(name)
    phases = plan(cfg, model)
    assert [p.name for p in phases] == {"joint": ["joint"], "trunk-first": ["trunk", "joint"], "boostnet": ["joint"],
                                        "ic-only": ["trunk", "exits"], "ztw": ["trunk", "exits", "ensemble"]}[name]
    for phase in phases:
        assert set(phase.trains) == _claimed(model, phase.name)
        frozen_trunk = {"exits": ("stages", f"exits.{model.num_exits - 1}"), "ensemble": ("stages", "exits")}
        assert phase.eval_modules == frozen_trunk.get(phase.name, ())
        before = {n: t.detach().clone() for n, t in model.state_dict().items()}
        run_phase(model, phase, toy_splits, cfg, device="cpu")
        after = model.state_dict()
        params = {n for n, _ in model.named_parameters()}
        changed = {n for n in params if not torch.equal(before[n], after[n])}
        # ZTW's cascade links that never learn: into the first exit (no earlier exit to read) and into the
        # final one (the trunk's classifier, weight 0 in the loss of the side exits)
        k = model.num_exits
        dead = {n for n in phase.trains if n.startswith(("cascade.0.", f"cascade.{k - 1}."))}
        assert changed == set(phase.trains) - dead, f"{name}/{phase.name}"
        for mod in phase.eval_modules:  # frozen modules keep their batch-norm statistics
            for b, _ in model.get_submodule(mod).named_buffers(prefix=mod):
                assert torch.equal(before[b], after[b]), f"{name}/{phase.name}: {b} moved"


def test_trunk_first_leaves_side_heads_alone_then_trains_them(toy_splits):
    scheme = SCHEMES.get("trunk-first")
    model = _model(scheme)
    cfg = _cfg("trunk-first")
    trunk, joint = plan(cfg, model)
    k = model.num_exits
    heads = lambda: [p.detach().clone() for h in model.exits[:-1] for p in h.parameters()]  # noqa: E731
    stages = lambda: [p.detach().clone() for p in model.stages.parameters()]  # noqa: E731
    h0, s0 = heads(), stages()
    run_phase(model, trunk, toy_splits, cfg, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(h0, heads()))  # side heads untouched in the trunk phase
    assert not any(torch.equal(a, b) for a, b in zip(s0, stages()))
    assert trunk.exit_weights == (0.0,) * (k - 1) + (1.0,)
    h1 = heads()
    run_phase(model, joint, toy_splits, cfg, first_epoch=trunk.epochs, device="cpu")
    assert not any(torch.equal(a, b) for a, b in zip(h1, heads()))


def test_ic_only_leaves_the_trunk_alone_in_the_heads_phase(toy_splits):
    model = _model(SCHEMES.get("ic-only"))
    cfg = _cfg("ic-only", exit_weights=(0.5, 1.0, 2.0))
    trunk, exits = plan(cfg, model)
    run_phase(model, trunk, toy_splits, cfg, device="cpu")
    k = model.num_exits
    frozen = {n: t.detach().clone() for n, t in model.state_dict().items()
              if n.startswith(("stages.", f"exits.{k - 1}."))}  # trunk weights and batch-norm statistics
    run_phase(model, exits, toy_splits, cfg, first_epoch=1, device="cpu")
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in frozen.items())
    assert exits.exit_weights == (0.5, 1.0, 0.0)  # the side exits' own weights, the final exit left out


def test_boostnet_scales_stage_gradients_and_the_registry_answers_scheme_questions():
    model = _model(SCHEMES.get("boostnet"))
    (phase,) = plan(_cfg("boostnet"), model)
    k = model.num_exits
    want = {f"stages.{i}.{n}": 1.0 / (k - i) for i, st in enumerate(model.stages) for n, _ in st.named_parameters()}
    assert dict(phase.grad_scale) == want
    assert phase.optim.kind == "sgd" and phase.optim.lr == 1e-2
    assert [n for n in SCHEMES if SCHEMES.get(n).needs_trained_trunk] == ["ic-only", "ztw"]
    assert {n: SCHEMES.get(n).chain for n in SCHEMES} == {"joint": "none", "trunk-first": "none", "boostnet": "boost",
                                                          "ic-only": "none", "ztw": "cascade"}
