"""Text classification: token models through ``TextClassification``, checked against closed forms and
Captum's layer methods, and the Compass on a TextCNN in a fit."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import assert_monitor_ran, make_trainer
from text_models import CLS, LENGTH, MASK, PAD, TASK, VOCAB, BagOfEmbeddings, TextCNN, sentences, text_compass
from torch import Tensor, nn

import compass_lightning as cl
from compass_lightning.attacks import ATTACKS, run_attack
from compass_lightning.attribution import METHODS
from compass_lightning.mutation_text import mutate_tokens
from compass_lightning.tasks.text import point_ids


def _probe(n: int = 6) -> tuple[Tensor, Tensor]:
    data = sentences(n, 3)
    return data.tensors


def test_the_space_round_trips_and_the_space_model_is_the_model():
    torch.manual_seed(0)
    model = TextCNN().eval()
    ids, _ = _probe()
    z = TASK.to_space(ids, model)
    assert z.shape == (len(ids), 2 + 8, 1, LENGTH)
    assert torch.equal(point_ids(z)[0], ids)
    assert torch.allclose(TASK.space_model(model)(z), model(ids), atol=1e-6)
    # the scale: one unit is the RMS of the embedding matrix' entries
    weight = model.embedding.weight.detach()
    assert torch.allclose(z[:, 2:, 0].transpose(1, 2) * weight.pow(2).mean().sqrt() + weight[MASK], model.embedding(ids).detach(), atol=1e-5)


def test_embedding_space_fgsm_equals_its_closed_form_on_a_bag_of_embeddings():
    torch.manual_seed(0)
    model = BagOfEmbeddings().eval()
    ids, _ = _probe()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    z = TASK.to_space(ids, model)
    eps = 0.3
    adv = run_attack("fgsm", TASK.space_model(model), z, y, eps=eps, bounds=TASK.input_range)
    # d CE / d z_t = s · W^T (softmax - onehot), the same at every perturbable position t
    scale = model.embedding.weight.detach().pow(2).mean().sqrt()
    probabilities = model(ids).softmax(dim=1).detach()
    direction = (scale * (probabilities - nn.functional.one_hot(y, 3)) @ model.linear.weight.detach()).sign()
    perturbable = ~TASK.fixed(ids)
    expected = eps * direction[:, :, None] * perturbable[:, None, :]
    assert torch.allclose(adv[:, 2:, 0] - z[:, 2:, 0], expected, atol=1e-6)
    assert torch.equal(adv[:, :2], z[:, :2])  # the token ids travel unchanged


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd", "mifgsm", "sinifgsm", "pgd_l2", "deepfool"])
def test_every_text_attack_stays_within_eps_keeps_the_ids_and_never_moves_padding_or_specials(name):
    torch.manual_seed(0)
    model = TextCNN().eval()
    ids, y = _probe()
    z = TASK.to_space(ids, model)
    eps = 0.5 if ATTACKS[name].norm == "linf" else 2.0
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    adv = run_attack(name, TASK.space_model(model), z, y, eps=eps, bounds=TASK.input_range, generator=g())
    delta = (adv - z)[:, 2:]
    size = delta.abs().amax() if ATTACKS[name].norm == "linf" else delta.flatten(1).norm(dim=1).max()
    assert size <= eps + 1e-4
    assert torch.equal(point_ids(adv)[0], ids)  # the probe's ids unchanged
    # padding and special positions: whatever the attack wrote there, the model sees their clean embeddings
    reset = adv.clone()
    fixed = TASK.fixed(ids)
    reset[:, 2:, 0] = torch.where(fixed[:, None, :], z[:, 2:, 0], adv[:, 2:, 0])
    space = TASK.space_model(model)
    assert torch.equal(space(reset), space(adv))
    again = run_attack(name, TASK.space_model(model), z, y, eps=eps, bounds=TASK.input_range, generator=g())
    assert torch.equal(again, adv)  # reproducible from the seed


def test_token_integrated_gradients_equal_captums_layer_integrated_gradients_and_are_complete():
    from captum.attr import LayerIntegratedGradients

    torch.manual_seed(0)
    model = TextCNN().eval()
    ids, _ = _probe()
    target = model(ids).argmax(dim=1)
    z = TASK.to_space(ids, model)
    ours = METHODS["integrated_gradients"].function(TASK.space_model(model), z, target, steps=64,
                                                    baseline=TASK.baseline(z, 0.0))
    tokens = ours[:, 2:, 0].sum(dim=1)  # summed over the embedding dimension
    assert torch.equal(ours[:, :2], torch.zeros_like(ours[:, :2]))  # nothing on the id channels
    baseline_ids = torch.where(TASK.fixed(ids), ids, torch.full_like(ids, MASK))
    reference = LayerIntegratedGradients(model, model.embedding).attribute(
        ids, baselines=baseline_ids, target=target, n_steps=64, method="gausslegendre").sum(dim=2)
    assert torch.allclose(tokens, reference, atol=1e-5)
    # a constant zero baseline scales the id channels along the path, and their ratio keeps the ids
    constant = METHODS["integrated_gradients"].function(TASK.space_model(model), z, target, steps=64)
    assert torch.allclose(constant[:, 2:, 0].sum(dim=1), reference, atol=1e-4)
    # completeness: the tokens' attributions sum to f(x) - f(baseline), up to the quadrature error of
    # a max-pooled ReLU network, which shrinks with the steps
    gap = (model(ids).gather(1, target[:, None]) - model(baseline_ids).gather(1, target[:, None])).squeeze(1).detach()
    fine = METHODS["integrated_gradients"].function(TASK.space_model(model), z, target, steps=512,
                                                    baseline=TASK.baseline(z, 0.0))[:, 2:, 0].sum(dim=(1, 2))
    assert (fine - gap).abs().max() < (tokens.sum(dim=1) - gap).abs().max() and torch.allclose(fine, gap, atol=2e-3)


def test_text_mutants_change_only_free_tokens_by_the_stated_fraction():
    ids, y = _probe(32)
    fixed = TASK.fixed(ids)
    free = (~fixed).sum(dim=1)
    kwargs = {"num_classes": 2, "fixed": fixed, "fill_id": MASK, "vocabulary_size": VOCAB}
    for name in ("data_missing", "token_replace", "token_swap"):
        mutated, labels = mutate_tokens(name, ids, y, generator=torch.Generator().manual_seed(0), p=0.5, **kwargs)
        assert torch.equal(mutated[fixed], ids[fixed]) and torch.equal(labels, y), name
        changed = (mutated != ids).sum(dim=1)
        if name == "data_missing":
            assert torch.equal(changed, torch.round(0.5 * free.float()).long() - ((ids == MASK) & ~fixed).sum(1) * 0)
            assert set(mutated[mutated != ids].tolist()) == {MASK}
        elif name == "token_swap":
            assert torch.equal(mutated.sort(dim=1).values, ids.sort(dim=1).values)  # the same tokens, moved
            assert changed.sum() > 0
        else:
            assert (changed <= torch.round(0.5 * free.float()).long()).all() and changed.sum() > 0
            assert not torch.isin(mutated[~fixed], torch.tensor([PAD, CLS])).any()


def test_image_methods_are_refused_for_text_with_the_reason_and_defaults_leave_them_out():
    with pytest.raises(ValueError, match=r"attacks: 'tifgsm' does not apply to TextClassification.*transforms images"):
        cl.AttackSuccessRate(attacks=["fgsm", "tifgsm"], task=TASK)
    with pytest.raises(ValueError, match=r"methods: 'gradcam' does not apply .*Conv2d feature map"):
        cl.AttributionScores(methods=["saliency", "gradcam"], task=TASK)
    with pytest.warns(cl.CompassWarning, match=r"AttributionScores: left out of the default methods.*'gradcam'"):
        scores = cl.AttributionScores(task=TASK)
    assert "gradcam" not in scores.methods
    with pytest.raises(ValueError, match="mutation.*'brightness'"):
        cl.MutationMetrics(mutations=["brightness"], task=TASK)


def test_the_compass_on_a_textcnn_logs_every_module_it_does_not_refuse(tmp_path):
    with pytest.warns(cl.CompassWarning, match="left out of the default"):
        compass = text_compass()
    assert not compass.modules["neurons"].deviation  # Grad-CAM deviation has no Conv2d here: left out, said so
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [compass], epochs=2)
    trainer.fit(TextCNN())
    assert_monitor_ran(compass, "compass/basic/accuracy", "compass/mutation/token_swap/accuracy",
                       "compass/robustness/pgd/asr", "compass/interpretability/integrated_gradients/insertion",
                       "compass/neurons/coverage/nc", "compass/pruning/magnitude/max_safe_rate")
    fit = [r for r in compass.history if r["stage"] == "fit"]
    assert fit[-2]["metrics"]["compass/basic/accuracy"] > 0.8  # the cue tokens are learnt
    # the Conv1d is analysed and pruned too, and every attack says how many real tokens it changes
    assert {"compass/neurons/coverage/nc/conv", "compass/neurons/sensitivity/fraction/conv"} <= set(fit[0]["metrics"])
    assert 0 <= fit[0]["metrics"]["compass/robustness/pgd/token_change_rate"] <= 1
    from compass_lightning.pruning import prunable

    assert "conv" in prunable(trainer.lightning_module)


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=LENGTH, num_labels=2, pad_token_id=PAD)
    return BertForSequenceClassification(config).eval()  # random weights: nothing is downloaded


def test_a_hugging_face_model_works_unchanged_and_its_token_ig_equals_captums():
    from captum.attr import LayerIntegratedGradients

    model = _tiny_bert()
    task = cl.TextClassification(pad_id=PAD, mask_id=MASK, special_ids=[CLS], attention_mask="attention_mask")
    ids, _ = _probe()
    z = task.to_space(ids, model)
    logits = task.outputs(model, ids)
    assert torch.allclose(task.space_model(model)(z), logits, atol=1e-5)  # the word embeddings replaced by a hook
    target = logits.argmax(dim=1)
    ours = METHODS["integrated_gradients"].function(task.space_model(model), z, target, steps=32,
                                                    baseline=task.baseline(z, 0.0))[:, 2:, 0].sum(dim=1)
    baseline_ids = torch.where(task.fixed(ids), ids, torch.full_like(ids, MASK))
    reference = LayerIntegratedGradients(lambda i: task.outputs(model, i), model.get_input_embeddings()).attribute(
        ids, baselines=baseline_ids, target=target, n_steps=32, method="gausslegendre").sum(dim=2)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.equal(ours[TASK.fixed(ids)], torch.zeros_like(ours[TASK.fixed(ids)]))  # padding and [CLS]


def test_projection_to_real_tokens_counts_what_an_embedding_attack_really_changes():
    from compass_lightning.attacks.scoring import attack_metrics, attack_probe
    from compass_lightning.engine.evaluation import Evaluation
    from compass_lightning.engine.probe import ProbeSet

    torch.manual_seed(0)
    model = TextCNN().eval()
    ids, y = _probe(16)
    assert torch.equal(TASK.nearest_tokens(TASK.to_space(ids, model), ids, model), ids)  # clean points are real
    evaluation = Evaluation(model, ProbeSet(ids, y), TASK, batch_size=8)
    clean = TASK.correct(evaluation.outputs(ids), y).cpu()
    rates = {}
    for eps in (0.01, 50.0):
        rows, _ = attack_probe(evaluation, "fgsm", {}, eps, torch.Generator().manual_seed(0))
        rates[eps] = attack_metrics(clean, rows)
    assert rates[0.01]["token_change_rate"] == 0 and rates[0.01]["projected_asr"] == 0  # too small to reach a token
    assert 0 < rates[50.0]["token_change_rate"] <= 1  # far enough to land on other tokens
    with pytest.raises(ValueError, match="transfer_from: transfer attacks do not apply"):
        cl.AttackSuccessRate(task=TASK, transfer_from=["snapshot"])
    assert {"compass/robustness/fgsm/token_change_rate", "compass/robustness/fgsm/projected_asr"} <= set(
        cl.AttackSuccessRate(attacks=["fgsm"], task=TASK).expected_tags())


def _trained_textcnn(tmp_path) -> TextCNN:
    pl.seed_everything(0)
    model = TextCNN()
    make_trainer(tmp_path, [], epochs=3, logger=False).fit(model)
    return model.eval()


def test_hotflip_flips_at_most_k_real_tokens_never_padding_or_specials_and_succeeds_more_with_k(tmp_path):
    model = _trained_textcnn(tmp_path)
    ids, y = sentences(64, 7).tensors
    z = TASK.to_space(ids, model)
    space = TASK.space_model(model)
    clean = space(z).argmax(1) == y
    rates = []
    for k in (1, 2, 4):
        adv = run_attack("hotflip", space, z, y, eps=0.0, bounds=TASK.input_range, k=k)
        flipped = point_ids(adv)[0]
        changed = flipped != ids
        assert (changed.sum(dim=1) <= k).all()
        assert not changed[TASK.fixed(ids)].any()  # padding and [CLS] never flipped
        assert not torch.isin(flipped[changed], torch.tensor([PAD, CLS])).any() and (flipped < VOCAB).all()
        # a real input: its embedding channels are those of its tokens, so the projection finds them again
        assert torch.equal(TASK.nearest_tokens(adv, ids, model), flipped)
        assert torch.allclose(space(adv), model(flipped), atol=1e-5)
        fooled = (space(adv).argmax(1) != y) & clean
        rates.append(float(fooled.sum() / clean.sum()))
    assert clean.float().mean() > 0.8 and rates == sorted(rates) and rates[-1] > rates[0]  # more flips, more success


def test_hotflip_in_the_robustness_monitor_is_real_and_refused_for_images(tmp_path):
    from compass_lightning.attacks.scoring import attack_metrics, attack_probe
    from compass_lightning.engine.evaluation import Evaluation
    from compass_lightning.engine.probe import ProbeSet

    model = _trained_textcnn(tmp_path)
    ids, y = sentences(32, 7).tensors
    evaluation = Evaluation(model, ProbeSet(ids, y), TASK, batch_size=16)
    clean = TASK.correct(evaluation.outputs(ids), y).cpu()
    rows, _ = attack_probe(evaluation, "hotflip", {"k": 2}, 0.0, torch.Generator())
    metrics = attack_metrics(clean, rows)
    assert metrics["projected_asr"] == metrics["asr"]  # every hotflip example is a real token sequence
    free = (~TASK.fixed(ids)).sum(dim=1).float()
    assert 0 < metrics["token_change_rate"] <= (2 / free).mean() + 1e-6
    with pytest.raises(ValueError, match="attacks: 'hotflip' does not apply to Classification.*flips tokens"):
        cl.AttackSuccessRate(attacks=["hotflip"], task=cl.Classification())


def test_token_heatmaps_draw_every_sentence_and_method_with_the_decoded_tokens():
    from compass_lightning.reporting.text_figures import tokens_of

    torch.manual_seed(0)
    model = TextCNN().eval()
    ids, y = _probe(3)
    vocabulary = [f"w{i}" for i in range(VOCAB)]
    task = cl.TextClassification(pad_id=PAD, mask_id=MASK, special_ids=[CLS], decode=vocabulary)
    z = task.to_space(ids, model)
    target = model(ids).argmax(1)
    maps = {name: METHODS[name].function(task.space_model(model), z, target) for name in ("saliency", "input_x_gradient")}
    picture = task.attribution_figure(ids, maps, target, y, title="epoch 0")
    assert picture.shape[0] == 3 and picture.shape[1] > 6 * 20 and bool(0 <= picture.min() <= picture.max() <= 1)
    assert (picture < 0.99).any(dim=0).float().mean() > 0.02  # coloured boxes and text, not a blank page
    words = tokens_of(ids, vocabulary, PAD)
    assert [len(w) for w in words] == (ids != PAD).sum(1).tolist() and words[0][0] == "w2"  # [CLS] is id 2
    assert tokens_of(ids[:1], lambda row: [f"<{i}>" for i in row], PAD)[0][0] == "<2>"
