"""rayalign's DPO-family losses equal TRL 1.16's on the same model, batch and beta (TRL is a test-only reference).

TRL entry points, each run on its own trainer (``report_to=[]``, fp32 on CPU, never trained):
- ``trl.DPOTrainer.compute_loss``: sigmoid, ipo, hinge, robust. cDPO: TRL 1.16's ``sigmoid`` has no label
  smoothing any more (``label_smoothing`` only feeds robust, exo_pair and aot), so cDPO is checked against its
  ``aot`` loss on one pair per call, where the sort is the identity and the formula is cDPO's
  ``-(1-eps) log sigma(beta delta) - eps log sigma(-beta delta)``.
- ``trl.experimental.cpo.CPOTrainer.compute_loss`` with ``loss_type="simpo"``, ``cpo_alpha=0``: SimPO.
- ``trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics``: ORPO.
- ``trl.KTOTrainer.compute_loss``: KTO.

Every TRL call gets the token ids rayalign tokenised, through TRL's own collator, and the test asserts the
padded tensors TRL sees are ours, and (DPO, KTO) that TRL's log-probs of them equal ``sequence_logps``: a
difference can only come from the loss. The policy is the reference plus a little weight noise, so the
margins are not at their zero values.
"""

import copy
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from rayalign.config import PreferenceConfig  # noqa: E402
from rayalign.data.collate import collate_kto, collate_preference, tokenize_kto, tokenize_preference  # noqa: E402
from rayalign.data.tasks import generate, to_row  # noqa: E402
from rayalign.models.logprobs import sequence_logps  # noqa: E402
from rayalign.training.objectives import KTOObjective, PreferenceObjective  # noqa: E402

N, MAX_LEN = 4, 256
TOL = 1e-5    # on the mean loss
LOGP_TOL = 1e-4  # on summed log-probs (magnitude ~100), two fp32 implementations of log-softmax


# ---------------------------------------------------------------- models and data (one per module)

@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def policy(reference):
    """The reference with N(0, 0.02^2) noise on every weight: implicit rewards well away from 0."""
    model = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def _with_reference(toks, collate, keys, reference, tokenizer):
    """Attach the reference's log-probs of both halves as row keys; (rows, collated batch)."""
    plain = collate(toks, tokenizer.pad_token_id)
    with torch.no_grad():
        ref, _ = sequence_logps(reference, plain.input_ids, plain.attention_mask, plain.labels)
    for i, t in enumerate(toks):
        t[keys[0]], t[keys[1]] = ref[i].item(), ref[N + i].item()
    return toks, collate(toks, tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def pref_rows():
    return [to_row(ex, "preference") for ex in generate("letter_count", N, 11)]


@pytest.fixture(scope="module")
def pref(tiny_tokenizer, pref_rows, reference):
    """(token lists per row, PreferenceBatch with the reference's log-probs attached as row keys)."""
    toks = [tokenize_preference(tiny_tokenizer, r, MAX_LEN) for r in pref_rows]
    return _with_reference(toks, collate_preference, ("ref_chosen", "ref_rejected"), reference, tiny_tokenizer)


@pytest.fixture(scope="module")
def kto_rows():
    # rows whose KL estimate (the policy's log-ratio on mismatched completions) is positive for this noise draw,
    # so the reference point z is exercised; for most draws it is negative and clamped to 0
    return [to_row(ex, "kto", i) for i, ex in enumerate(generate("letter_count", N, 13))]


@pytest.fixture(scope="module")
def kto(tiny_tokenizer, kto_rows, reference):
    """KTO rows whose KL completion is the previous row's (TRL's rotation: row i gets completion i-1)."""
    toks = [tokenize_kto(tiny_tokenizer, r, kto_rows[i - 1]["completion"], MAX_LEN)
            for i, r in enumerate(kto_rows)]
    return _with_reference(toks, collate_kto, ("ref_pair", "ref_kl"), reference, tiny_tokenizer)


def _args(cls, tmp_path_factory, **kw):
    # bf16 defaults to True in TRL configs; fp32 on CPU keeps both sides in the same precision
    return cls(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], bf16=False, use_cpu=True,
               per_device_train_batch_size=N, max_length=MAX_LEN, **kw)


@pytest.fixture(scope="module")
def make_trainer(tmp_path_factory, tiny_tokenizer, policy, reference, pref_rows, kto_rows):
    """Builds one TRL trainer on private copies of the models (TRL patches their forward)."""
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    def make(kind: str, **kw):
        pol, ref = copy.deepcopy(policy), copy.deepcopy(reference)
        if kind == "dpo":
            return DPOTrainer(model=pol, ref_model=ref, args=_args(DPOConfig, tmp_path_factory, **kw),
                              train_dataset=Dataset.from_list(pref_rows), processing_class=tiny_tokenizer)
        if kind == "kto":
            return KTOTrainer(model=pol, ref_model=ref, args=_args(KTOConfig, tmp_path_factory, **kw),
                              train_dataset=Dataset.from_list(kto_rows), processing_class=tiny_tokenizer)
        cls, cfg = {"cpo": (CPOTrainer, CPOConfig), "orpo": (ORPOTrainer, ORPOConfig)}[kind]
        return cls(model=pol, args=_args(cfg, tmp_path_factory, **kw), train_dataset=Dataset.from_list(pref_rows),
                   processing_class=tiny_tokenizer)
    return make


# ---------------------------------------------------------------- feeding TRL our token ids

def _dpo_inputs(trainer, toks, batch=None):
    """TRL's DPO collator on rayalign's ids; asserts the padded tensors are rayalign's batch."""
    for t in toks:
        assert t["chosen"][0] == t["rejected"][0]
    inputs = trainer.data_collator([{"prompt_ids": t["chosen"][0], "chosen_ids": t["chosen"][1],
                                     "rejected_ids": t["rejected"][1]} for t in toks])
    if batch is not None:
        assert torch.equal(inputs["input_ids"], batch.input_ids)
        assert torch.equal(inputs["attention_mask"], batch.attention_mask)
        assert torch.equal(inputs["completion_mask"].bool(), batch.labels != -100)
    return inputs


def _pair_inputs(trainer, toks, batch):
    """CPO / ORPO: TRL's DPODataCollatorWithPadding on rayalign's ids, then its concatenation = our batch."""
    feats = []
    for t in toks:
        f = {}
        for side in ("chosen", "rejected"):
            p, c = t[side]
            f[f"{side}_input_ids"], f[f"{side}_attention_mask"] = p + c, [1] * (len(p) + len(c))
            f[f"{side}_labels"] = [-100] * len(p) + c
        feats.append(f)
    inputs = trainer.data_collator(feats)
    cat = trainer.concatenated_inputs(inputs, padding_value=trainer.processing_class.pad_token_id)
    assert torch.equal(cat["concatenated_input_ids"], batch.input_ids)
    assert torch.equal(cat["concatenated_attention_mask"], batch.attention_mask)
    assert torch.equal(cat["concatenated_labels"], batch.labels)
    return inputs


def _rayalign(objective, model, batch):
    with torch.no_grad():
        loss_sum, metrics = objective.loss(model, batch)
    return loss_sum.item() / (batch.input_ids.shape[0] // 2), metrics


def _report(name, ours, theirs):
    print(f"trl-parity {name}: rayalign {ours:.8f} trl {theirs:.8f} |diff| {abs(ours - theirs):.2e}")


# ---------------------------------------------------------------- the tests

def test_trl_tokenises_rows_as_rayalign_plus_the_template_newline(make_trainer, pref, kto, tiny_tokenizer):
    """The same rows through TRL's own preprocessing: identical prompts and completions, except that TRL keeps
    the chat template's trailing newline after <|im_end|> (rayalign stops the completion at the end-of-turn
    token, collate.py's documented choice). The losses below feed TRL rayalign's ids, so this does not enter."""
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    dpo = make_trainer("dpo", loss_type=["sigmoid"])
    for t, ex in zip(pref[0], dpo.train_dataset, strict=True):
        assert ex["prompt_ids"] == t["chosen"][0]
        assert ex["chosen_ids"] == t["chosen"][1] + newline and ex["rejected_ids"] == t["rejected"][1] + newline
    kt = make_trainer("kto")
    for t, ex in zip(kto[0], kt.train_dataset, strict=True):
        assert ex["prompt_ids"] == t["pair"][0] == t["kl"][0]
        assert ex["completion_ids"] == t["pair"][1] + newline
        assert ex["KL_completion_ids"] == t["kl"][1] + newline  # same rotation of completions


# betas chosen so every regime shows up (hinge: 3 pairs inside the margin, 1 clipped) while a 1-ulp difference
# in a summed log-prob (~8e-6 at |logp| ~ 128) stays far below TOL after the loss scales it
DPO_CASES = {
    "sigmoid": dict(beta=0.1),
    "ipo": dict(beta=0.5),
    "hinge": dict(beta=1.0),
    "robust": dict(beta=0.1, label_smoothing=0.2),
}


@pytest.mark.parametrize("loss_type", list(DPO_CASES))
def test_dpo_losses_match_trl(loss_type, make_trainer, pref, policy, reference):
    toks, batch = pref
    kw = DPO_CASES[loss_type]
    trainer = make_trainer("dpo", loss_type=[loss_type], **kw)
    inputs = _dpo_inputs(trainer, toks, batch)

    # TRL's log-probs of these sequences are rayalign's: policy, and the reference attached to the batch
    with torch.no_grad():
        trl_pol = torch.cat(trainer.compute_ref_log_probs(trainer.model, inputs))
        trl_ref = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, inputs))
        ours_pol, _ = sequence_logps(policy, batch.input_ids, batch.attention_mask, batch.labels)
    assert torch.allclose(trl_ref, batch.ref_logps, atol=LOGP_TOL, rtol=0)
    assert torch.allclose(trl_pol, ours_pol, atol=LOGP_TOL, rtol=0)
    delta = (ours_pol[:N] - batch.ref_logps[:N]) - (ours_pol[N:] - batch.ref_logps[N:])
    assert delta.abs().min() > 0.1  # not at the zero-margin point

    ours, metrics = _rayalign(PreferenceObjective(PreferenceConfig(loss_type=loss_type, **kw)), policy, batch)
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, inputs).item()
    _report(loss_type, ours, theirs)
    assert ours == pytest.approx(theirs, abs=TOL)
    assert metrics["rewards/margins"] == pytest.approx(kw["beta"] * delta.mean().item(), abs=1e-5)


def test_cdpo_matches_trl_aot_per_pair(make_trainer, pref, policy):
    """cDPO (sigmoid + label_smoothing). TRL 1.16's DPOTrainer 'sigmoid' ignores label_smoothing, so the
    reference is its 'aot' loss on single pairs, which is exactly the conservative-DPO formula there."""
    toks, batch = pref
    eps, beta = 0.2, 0.1
    trainer = make_trainer("dpo", loss_type=["aot"], beta=beta, label_smoothing=eps)
    with torch.no_grad():
        per_pair = [trainer.compute_loss(trainer.model, _dpo_inputs(trainer, [t])).item() for t in toks]
    theirs = sum(per_pair) / N
    _dpo_inputs(trainer, toks, batch)  # the same sequences as the batch
    ours, _ = _rayalign(PreferenceObjective(PreferenceConfig(loss_type="sigmoid", beta=beta, label_smoothing=eps)),
                        policy, batch)
    plain, _ = _rayalign(PreferenceObjective(PreferenceConfig(loss_type="sigmoid", beta=beta)), policy, batch)
    _report("cdpo", ours, theirs)
    assert ours == pytest.approx(theirs, abs=TOL)
    assert abs(ours - plain) > 1e-3  # the smoothing term is exercised


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo(label_smoothing, make_trainer, pref, policy):
    toks, batch = pref
    beta, gamma = 2.0, 0.5
    trainer = make_trainer("cpo", loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma,
                           label_smoothing=label_smoothing)
    inputs = _pair_inputs(trainer, toks, batch)
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, inputs).item()
    cfg = PreferenceConfig(loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=label_smoothing)
    ours, metrics = _rayalign(PreferenceObjective(cfg), policy, batch)
    _report(f"simpo(eps={label_smoothing})", ours, theirs)
    assert ours == pytest.approx(theirs, abs=TOL)
    assert metrics["rewards/chosen"] < -1.0  # beta x mean token log-prob: far from 0


def test_orpo_matches_trl(make_trainer, pref, policy):
    """ORPO = NLL(chosen) - beta * mean log sigma(log odds ratio); the NLL is averaged over every chosen
    token after the first, prompt included (the ORPO authors' default, and TRL's)."""
    toks, batch = pref
    beta = 0.1
    trainer = make_trainer("orpo", beta=beta)
    inputs = _pair_inputs(trainer, toks, batch)
    with torch.no_grad():
        theirs, trl_m = trainer.get_batch_loss_metrics(trainer.model, inputs)
    theirs = theirs.item()
    ours, metrics = _rayalign(PreferenceObjective(PreferenceConfig(loss_type="orpo", beta=beta)), policy, batch)
    assert metrics["log_odds_ratio"] == pytest.approx(trl_m["log_odds_ratio"], abs=TOL)
    chosen = slice(0, N)
    full_labels = batch.input_ids[chosen].masked_fill(batch.attention_mask[chosen] == 0, -100)
    with torch.no_grad():
        logp, count = sequence_logps(policy, batch.input_ids[chosen], batch.attention_mask[chosen], full_labels)
    assert metrics["nll_loss"] == pytest.approx((-logp.sum() / count.sum()).item(), abs=TOL)
    assert metrics["nll_loss"] == pytest.approx(trl_m["nll_loss"], abs=TOL)
    _report("orpo", ours, theirs)
    assert ours == pytest.approx(theirs, abs=TOL)


def test_kto_matches_trl(make_trainer, kto, policy, reference):
    toks, batch = kto
    beta, dw, uw = 0.1, 1.0, 1.3
    trainer = make_trainer("kto", beta=beta, desirable_weight=dw, undesirable_weight=uw)
    inputs = trainer.data_collator([{"prompt_ids": t["pair"][0], "completion_ids": t["pair"][1],
                                     "KL_completion_ids": t["kl"][1], "label": t["label"]} for t in toks])
    # the sequences TRL sees are ours (TRL pads the KL rows separately, so compare them unpadded)
    for prefix, rows in (("", slice(0, N)), ("KL_", slice(N, 2 * N))):
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        theirs_ids, theirs_mask = inputs[f"{prefix}input_ids"], inputs[f"{prefix}attention_mask"]
        for i in range(N):
            assert ids[i][mask[i].bool()].tolist() == theirs_ids[i][theirs_mask[i].bool()].tolist()
            w = int(theirs_mask[i].sum())
            ours_completion = (batch.labels[rows][i][:w] != -100).tolist()
            assert inputs[f"{prefix}completion_mask"][i][:w].bool().tolist() == ours_completion
    assert inputs["label"].tolist() == batch.desirable.tolist() == [True, False] * (N // 2)

    with torch.no_grad():
        trl_pol, trl_pol_kl = trainer.compute_ref_log_probs(trainer.model, inputs)
        trl_ref, trl_ref_kl = trainer.compute_ref_log_probs(trainer.ref_model, inputs)
    assert torch.allclose(torch.cat([trl_ref, trl_ref_kl]), batch.ref_logps, atol=LOGP_TOL, rtol=0)
    trl_kl = (trl_pol_kl - trl_ref_kl).mean().clamp(min=0).item()

    cfg = PreferenceConfig(loss_type="kto", beta=beta, desirable_weight=dw, undesirable_weight=uw)
    ours, metrics = _rayalign(KTOObjective(cfg), policy, batch)
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, inputs).item()
    _report("kto", ours, theirs)
    assert metrics["kl"] == pytest.approx(trl_kl, abs=1e-5)
    assert metrics["kl"] > 0.01  # the reference point z is exercised, not clamped away
    assert ours == pytest.approx(theirs, abs=TOL)
    assert abs(ours - 0.5 * (dw + uw) / 2) > 1e-3  # away from the value at the reference


@pytest.mark.parametrize("margins, center", [(False, None), (True, 0.01)])
def test_reward_model_loss_matches_trl(margins, center, tmp_path_factory, tiny_model_dir, tiny_tokenizer, pref_rows):
    """Bradley-Terry (with TRL's per-row ``margin`` and ``center_rewards_coefficient``) on a one-label score head:
    rayalign's objective and ``trl.RewardTrainer.compute_loss`` on the same ids through TRL's collator."""
    from trl import RewardConfig, RewardTrainer

    from rayalign.config import ModelConfig
    from rayalign.data.collate import collate_reward
    from rayalign.models.loading import load_model
    from rayalign.training.objectives import RewardModelObjective

    torch.manual_seed(2)
    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), head="score").eval()
    with torch.no_grad():  # a fresh head scores everything ~0 (std 0.02): spread the scores
        model.score.weight.normal_(0.0, 1.0)
    toks = [tokenize_preference(tiny_tokenizer, r, MAX_LEN) for r in pref_rows]
    if margins:
        for i, t in enumerate(toks):
            t["margin"] = 0.5 * i
    batch = collate_reward(toks, tiny_tokenizer.pad_token_id)
    objective = RewardModelObjective(PreferenceConfig(center_rewards_coefficient=center))
    with torch.no_grad():
        loss_sum, metrics = objective.loss(model, batch)
    ours = loss_sum.item() / N

    trainer = RewardTrainer(model=copy.deepcopy(model), processing_class=tiny_tokenizer,
                            args=_args(RewardConfig, tmp_path_factory, center_rewards_coefficient=center),
                            train_dataset=Dataset.from_list(pref_rows))
    inputs = trainer.data_collator([{"chosen_ids": sum(t["chosen"], []), "rejected_ids": sum(t["rejected"], []),
                                     **({"margin": t["margin"]} if margins else {})} for t in toks])
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    assert torch.equal(inputs["attention_mask"], batch.attention_mask)
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, inputs).item()
    _report(f"reward_model margins={margins} center={center}", ours, theirs)
    assert ours == pytest.approx(theirs, abs=TOL)
    assert 0 < metrics["accuracy"] < 1 and abs(metrics["rewards/margins"]) > 0.01  # the scores are not all alike
    assert trainer._metrics["eval"]["accuracy"][-1] == pytest.approx(metrics["accuracy"])
