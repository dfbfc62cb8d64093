"""Text classification: token models through ``TextClassification``, checked against closed forms and
Captum's layer methods, and the Compass on a TextCNN in a fit."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import assert_monitor_ran, make_trainer
from text_models import (
    BERT_TASK, CLS, LENGTH, MASK, PAD, TASK, VOCAB, ABLSTM, BagOfEmbeddings, TextCNN, TinyBert, sentences, text_compass, tiny_bert,
)
from torch import Tensor, nn

import compass_lightning as cl
from compass_lightning.attacks import ATTACKS, run_attack
from compass_lightning.attribution import METHODS
from compass_lightning.mutation_text import mutate_tokens
from compass_lightning.pruning import prunable
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


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd", "mifgsm", "sinifgsm", "pgd_l2", "cw", "deepfool"])
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
    # an image budget (8/255) means nothing in embedding space: the task gives its own defaults
    assert cl.AttackSuccessRate(task=TASK, attacks=["fgsm"]).eps == {"linf": (0.5,), "l2": (2.0,)}
    assert cl.AttackSuccessRate(attacks=["fgsm"]).eps == {"linf": (8 / 255,), "l2": (0.5,)}
    assert cl.PruningAnalysis(task=TASK).eps == {"linf": 0.5, "l2": 2.0}


MODELS = {  # model, task, a layer of its own the neuron analysis must read, weights pruning must count
    "textcnn": (TextCNN, TASK, "conv", "conv.weight"),
    "ablstm": (ABLSTM, TASK, "lstm", "lstm.weight_hh_l0_reverse"),
    "bert": (TinyBert, BERT_TASK, "bert.bert.encoder.layer.0", "bert.bert.encoder.layer.0.attention.self.query.weight"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_compass_on_each_text_model_logs_every_module_it_does_not_refuse(tmp_path, name):
    model_class, task, layer, weight = MODELS[name]
    with pytest.warns(cl.CompassWarning, match="left out of the default"):
        compass = text_compass(task)
    assert not compass.modules["neurons"].deviation  # Grad-CAM deviation has no Conv2d here: left out, said so
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [compass], epochs=2)
    model = model_class()
    trainer.fit(model)
    assert_monitor_ran(compass, "compass/basic/accuracy", "compass/mutation/token_swap/accuracy",
                       "compass/robustness/pgd/asr", "compass/interpretability/integrated_gradients/insertion",
                       "compass/neurons/coverage/nc", "compass/pruning/magnitude/max_safe_rate")
    fit = [r for r in compass.history if r["stage"] == "fit"]
    if name == "textcnn":
        assert fit[-2]["metrics"]["compass/basic/accuracy"] > 0.8  # the cue tokens are learnt
    for record in compass.history:
        assert not [k for k, v in record["metrics"].items() if v is not None and not math.isfinite(v)], record["stage"]
    # its own layers are analysed and pruned too, and every attack says how many real tokens it changes
    assert {f"compass/neurons/coverage/nc/{layer}", f"compass/neurons/sensitivity/fraction/{layer}"} <= set(fit[0]["metrics"])
    assert 0 <= fit[0]["metrics"]["compass/robustness/pgd/token_change_rate"] <= 1
    assert {"embedding.weight" if name != "bert" else "bert.bert.embeddings.word_embeddings.weight", weight} <= set(prunable(model))


def test_a_hugging_face_model_works_unchanged_and_its_token_ig_equals_captums():
    from captum.attr import LayerIntegratedGradients

    model = tiny_bert()
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


def _decoded(n: int):
    """An untrained TextCNN, ``n`` probe sentences, a vocabulary ``w0, w1, ...``, a task decoding by it, the points."""
    torch.manual_seed(0)
    model = TextCNN().eval()
    ids, y = _probe(n)
    vocabulary = [f"w{i}" for i in range(VOCAB)]
    task = cl.TextClassification(pad_id=PAD, mask_id=MASK, special_ids=[CLS], decode=vocabulary)
    return model, ids, y, vocabulary, task, task.to_space(ids, model)


def test_token_heatmaps_draw_every_sentence_and_method_with_the_decoded_tokens():
    from compass_lightning.reporting.text_figures import tokens_of

    model, ids, y, vocabulary, task, z = _decoded(3)
    target = model(ids).argmax(1)
    maps = {name: METHODS[name].function(task.space_model(model), z, target) for name in ("saliency", "input_x_gradient")}
    picture = task.attribution_figure(ids, maps, target, y, title="epoch 0")
    assert picture.shape[0] == 3 and picture.shape[1] > 6 * 20 and bool(0 <= picture.min() <= picture.max() <= 1)
    assert (picture < 0.99).any(dim=0).float().mean() > 0.02  # coloured boxes and text, not a blank page
    words = tokens_of(ids, vocabulary, PAD)
    assert [len(w) for w in words] == (ids != PAD).sum(1).tolist() and words[0][0] == "w2"  # [CLS] is id 2
    assert tokens_of(ids[:1], lambda row: [f"<{i}>" for i in row], PAD)[0][0] == "<2>"


def test_neuron_means_cover_real_tokens_only_so_more_padding_changes_nothing():
    from compass_lightning.neurons import neuron_sensitivity, neuron_values, select_layers

    torch.manual_seed(0)
    ids, _ = _probe(4)
    longer = torch.cat([ids, torch.full((len(ids), 6), PAD)], dim=1)  # the same sentences, more padding
    for model in (TextCNN(), ABLSTM()):  # a Conv1d (windows over tokens) and a BiLSTM's output sequence
        model.eval()
        layers = select_layers(model, example=ids[:1])
        assert ("lstm" in layers) == isinstance(model, ABLSTM) and ("conv" in layers) == isinstance(model, TextCNN)
        short = neuron_values(model, ids, layers, TASK.positions(ids)).values
        long = neuron_values(model, longer, layers, TASK.positions(longer)).values
        inner = "conv" if isinstance(model, TextCNN) else "lstm"
        # a unidirectional reading would be exact; the BiLSTM's reverse pass crosses the padding, so only its
        # forward half is invariant, and without the mask the means would shrink by the padding's share
        units = slice(None) if inner == "conv" else slice(0, 8)
        assert torch.allclose(short[inner][:, units], long[inner][:, units], atol=1e-6), type(model).__name__
        unmasked = neuron_values(model, longer, layers).values
        assert not torch.allclose(unmasked[inner][:, units], short[inner][:, units], atol=1e-3)
    # the sensitivity reads the same masks through the space model: padding never counts
    z = TASK.to_space(ids, model)
    scores = neuron_sensitivity(TASK.space_model(model), z, draws=2, generator=torch.Generator().manual_seed(0),
                                valid=TASK.positions(ids))
    assert set(scores) == set(layers) and all(torch.isfinite(s).all() for s in scores.values())


def test_pruning_counts_embedding_and_recurrent_weights_as_torch_global_pruning_does():
    from torch.nn.utils import prune as torch_prune

    from compass_lightning.pruning import importance, prune, sparsity

    torch.manual_seed(0)
    model = ABLSTM().eval()
    entries = prunable(model)
    assert list(entries) == ["embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l0_reverse",
                             "lstm.weight_hh_l0_reverse", "score.weight", "head.weight"]
    ours = prune(model, importance(model, "magnitude", []), 0.5)
    reference = copy.deepcopy(model)
    torch_prune.global_unstructured([(e.module, e.attribute) for e in prunable(reference).values()],
                                    torch_prune.L1Unstructured, amount=0.5)
    for name, entry in prunable(reference).items():
        assert torch.equal(prunable(ours)[name].weight == 0, entry.weight == 0), name
    total = sum(e.weight.numel() for e in entries.values())
    assert abs(sparsity(ours) * total - round(0.5 * total)) <= 1 and sparsity(model) < 0.05  # the original untouched
    ids, _ = _probe(4)
    assert torch.isfinite(ours(ids)).all()  # the pruned LSTM still runs
    structured = prune(model, importance(model, "magnitude", []), 0.3, structured=True)
    for name, entry in prunable(structured).items():  # whole rows: a token's embedding, a gate unit, a filter
        rows = entry.weight.flatten(1) == 0
        assert torch.equal(rows.all(dim=1), rows.any(dim=1)), name


class OneToken(nn.Module):
    """Reads the token at position 1 only (the first after [CLS])."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 6, padding_idx=PAD)
        self.linear = nn.Linear(6, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.linear(self.embedding(ids)[:, 1])


def test_token_deletion_reaches_the_floor_and_insertion_the_top_when_the_read_token_ranks_first():
    from compass_lightning.attribution import insertion_deletion
    from compass_lightning.attribution.scoring import substrate

    torch.manual_seed(0)
    model = OneToken().eval()
    ids, _ = _probe(6)
    free = TASK.perturbable(ids)
    z = TASK.to_space(ids, model)
    space = TASK.space_model(model)
    target = TASK.outputs(model, ids).argmax(dim=1)
    scores = torch.rand(ids.shape) * free  # every other token below the read one, which ranks first
    scores[:, 1] = 2.0
    attributions = torch.zeros_like(z)
    attributions[:, 2] = scores[:, None]
    n = free.sum(dim=1).float()
    insertion, deletion, curves = insertion_deletion(space, z, attributions, target=target, steps=5,
                                                     baseline=substrate(TASK, z, "zeros"), insertion_start=substrate(TASK, z, "zeros"),
                                                     valid=free)
    with torch.no_grad():
        top = TASK.outputs(model, ids).softmax(1).gather(1, target[:, None])[:, 0]
        masked = ids.clone()
        masked[:, 1] = MASK
        floor = TASK.outputs(model, masked).softmax(1).gather(1, target[:, None])[:, 0]
    # the curves run over each sentence's own tokens: the read token goes at the first of its n steps
    # (5 points evenly over n >= 4 tokens: the first step past 0 changes round(n / 4) >= 1 tokens)
    assert torch.allclose(curves["deletion"][:, 0], top, atol=1e-6) and torch.allclose(curves["deletion"][:, -1], floor, atol=1e-6)
    assert torch.allclose(curves["deletion"][:, 1:], floor[:, None].expand(-1, 4), atol=1e-6)
    assert torch.allclose(curves["insertion"][:, 1:], top[:, None].expand(-1, 4), atol=1e-6)
    step = 1 / 4
    assert torch.allclose(deletion, floor + (top - floor) * step / 2, atol=1e-6)
    assert torch.allclose(insertion, top - (top - floor) * step / 2, atol=1e-6)
    # padding and [CLS] are never touched: the all-deleted input is each sentence with its free tokens masked
    assert torch.allclose(curves["insertion"][:, 0], floor, atol=1e-6) and (n < LENGTH - 1).any()


def test_adversarial_examples_are_drawn_as_the_tokens_they_project_to_with_the_changes_marked(monkeypatch, tmp_path):
    import compass_lightning.reporting.text_figures as text_figures
    from compass_lightning.reporting.text_figures import tokens_of

    model, ids, y, vocabulary, task, z = _decoded(2)
    # an "attack" that moves the first word of each sentence exactly onto the embedding of token 20
    x_adv = z.clone()
    x_adv[:, 2:, 0, 1] = task.to_space(torch.full_like(ids, 20), model)[:, 2:, 0, 1]
    drawn = []
    monkeypatch.setattr(text_figures, "token_heatmap", lambda rows, title: drawn.append((rows, title)) or torch.zeros(3, 1, 1))
    predicted = model(ids).argmax(1)
    task.adversarial_figure(z, {"fgsm": (x_adv, predicted)}, y, predicted, "epoch 0", model)
    rows, title = drawn[0]
    assert len(rows) == 4 and "nearest tokens" in title
    label, tokens, changed = rows[1]
    assert label.startswith("#0 fgsm: predicted") and "(1 changed)" in label
    assert tokens[1] == "w20" and tokens[0] == "w2" and changed.tolist() == [0, 1] + [0] * (len(tokens) - 2)
    assert rows[0][1] == tokens_of(ids[:1], vocabulary, PAD)[0] and rows[0][2].abs().sum() == 0
    # through the monitor: the examples image is logged for text
    monkeypatch.undo()
    monitor = cl.AttackSuccessRate(task=TASK, attacks=["fgsm", "hotflip"], probe_size=16, image_count=2, eps=[0.5])
    trainer = make_trainer(tmp_path, [monitor], epochs=1, logger=pl.loggers.CSVLogger(tmp_path))
    trainer.fit(TextCNN())
    assert list(tmp_path.rglob("compass_images/compass/robustness/examples/*.png"))


def test_token_heatmaps_are_coloured_text_in_the_html_report(tmp_path):
    from compass_lightning.reporting.summary import run_report

    vocabulary = [f"w{i}" for i in range(VOCAB)]
    vocabulary[20] = "<b>bold</b>"  # a token that must be escaped, not rendered
    task = cl.TextClassification(pad_id=PAD, mask_id=MASK, special_ids=[CLS], decode=vocabulary)
    monitor = cl.AttributionScores(task=task, methods=["saliency"], probe_size=4, image_count=2, steps=4, every_n_epochs=1,
                                   random_baseline=False)
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, [monitor], epochs=1)
    trainer.fit(TextCNN())
    page, _ = run_report(trainer.logger.log_dir)
    assert "<h2>Token attributions</h2>" in page and "compass/interpretability/heatmaps" in page
    labels = [part.split("</b>")[0] for part in page.split("<div class=tokens><b>")[1:]]
    assert page.count("<div class=tokens>") == 2, labels  # two sentences x one method
    assert "<b>#0 saliency: predicted" in page and "<b>bold</b>" not in page
    spans = page.split("<div class=tokens>")[1].split("</div>")[0]
    assert 'class=token style="background:rgb(' in spans and ">w2</span>" in spans  # [CLS] is id 2, drawn first
