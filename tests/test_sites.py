"""Every analysis reads a layer at the same place, after its activation, for any model (issue 16 item 6)."""

import pytest
import torch
import torchvision
from torch import nn

from compass_lightning.attacks import run_attack
from compass_lightning.attribution import attribute
from compass_lightning.engine.sites import layer_site, read_sites
from compass_lightning.neurons import neuron_values, select_layers


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    with torch.no_grad():  # batch statistics that differ from the identity, so that reading before or after them shows
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
    return model


def _block_outputs(model, x, names):
    outputs = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


def test_a_resnet_is_read_after_each_activation_at_the_right_call_of_its_reused_relu(resnet):
    x = torch.rand(2, 3, 32, 32)
    layers = select_layers(resnet, example=x[:1])
    where = {name: (layer.site.name, layer.site.call, layer.site.calls) for name, layer in layers.items()}
    assert where["conv1"] == ("relu", 0, 1)
    assert where["layer1.0.conv1"] == ("layer1.0.relu", 0, 2) and where["layer1.0.conv2"] == ("layer1.0.relu", 1, 2)
    # the shortcut's sum goes to the block's last convolution; the shortcut is read after its batch norm
    assert where["layer2.0.conv2"] == ("layer2.0.relu", 1, 2)
    assert where["layer2.0.downsample.0"] == ("layer2.0.downsample.1", 0, 1)
    assert where["fc"] == ("fc", 0, 1)  # the logits: nothing follows
    values = neuron_values(resnet, x, layers).values
    seen = _block_outputs(resnet, x, ["layer1.0", "layer3.1", "layer2.0.bn1", "layer2.0.downsample"])
    # a block's last convolution is read at the block's output (after the sum and the ReLU) ...
    torch.testing.assert_close(values["layer1.0.conv2"], seen["layer1.0"].mean(dim=(2, 3)))
    torch.testing.assert_close(values["layer3.1.conv2"], seen["layer3.1"].mean(dim=(2, 3)))
    # ... its first after batch norm and the first call of the same ReLU
    torch.testing.assert_close(values["layer2.0.conv1"], seen["layer2.0.bn1"].relu().mean(dim=(2, 3)))
    torch.testing.assert_close(values["layer2.0.downsample.0"], seen["layer2.0.downsample"].mean(dim=(2, 3)))
    after_activation = [n for n in layers if n != "fc" and "downsample" not in n]
    assert all((values[n] >= 0).all() for n in after_activation)


def test_the_attributions_and_transfer_attacks_read_the_layer_the_neuron_analyses_read(resnet):
    from captum.attr import LayerAttribution, LayerGradCam

    x, y = torch.rand(3, 3, 64, 64), torch.tensor([0, 1, 2])  # the last block's maps are 2 x 2
    neurons = select_layers(resnet, example=x[:1])
    last, middle = layer_site(resnet, None, x[:1]), layer_site(resnet, None, x[:1], default="middle")
    assert (last.name, last.call) == (neurons["layer4.1.conv2"].site.name, neurons["layer4.1.conv2"].site.call) == ("layer4.1.relu", 1)
    assert (middle.name, middle.call) == ("layer2.1.relu", 1)  # the 10th of 20 convolutions: layer2.1.conv2
    # Grad-CAM by default: Captum's at the last block's output (the second call of its ReLU)
    ours = attribute("gradcam", resnet, x, y)
    reference = LayerGradCam(resnet, resnet.layer4[1]).attribute(x, target=y, relu_attributions=True)
    reference = LayerAttribution.interpolate(reference, (64, 64), interpolate_mode="bilinear").expand_as(x)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    # NAA and ATA by default: the same examples as when given the block whose output that call is
    for attack, block in (("naa", "layer2.1"), ("ata", "layer4.1")):
        params = {"steps": 2, "integration_steps": 3} if attack == "naa" else {"steps": 2}
        default = run_attack(attack, resnet, x, y, eps=8 / 255, **params)
        named = run_attack(attack, resnet, x, y, eps=8 / 255, layer=block, **params)
        raw = run_attack(attack, resnet, x, y, eps=8 / 255, layer=f"{block}.conv2", **params)
        assert torch.equal(default, named), attack
        assert not torch.equal(default, raw), attack  # the raw convolution is another place


def test_a_functional_step_that_changes_the_shape_ends_the_search_and_tracing_changes_nothing():
    class Pooled(nn.Module):  # conv -> max over positions (a function) -> ReLU module: not the conv's activation
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu, self.head = nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.relu(self.bn(self.conv(x)).amax(dim=2)))

    model = Pooled().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sites = read_sites(model, torch.rand(1, 2, 6), ["conv", "head"])
    assert [(s.name, s.call) for s in sites.values()] == [("bn", 0), ("head", 0)]
    # one sample in train mode would fail batch norm: the trace runs in eval mode and restores the mode
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no running statistics moved
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_layers_named_by_the_user_are_read_as_they_are_at_their_last_call(resnet):
    x = torch.rand(2, 3, 32, 32)
    layers = select_layers(resnet, ["layer1.0.conv2", "layer1.0.relu"], example=x[:1])
    assert [(l.site.name, l.site.call, l.site.calls) for l in layers.values()] == [
        ("layer1.0.conv2", 0, 1), ("layer1.0.relu", 1, 2)]
    values = neuron_values(resnet, x, layers).values
    seen = _block_outputs(resnet, x, ["layer1.0.conv2", "layer1.0"])
    torch.testing.assert_close(values["layer1.0.conv2"], seen["layer1.0.conv2"].mean(dim=(2, 3)))
    torch.testing.assert_close(values["layer1.0.relu"], seen["layer1.0"].mean(dim=(2, 3)))


# -- models whose modules do not all run as modules (issue 17 item 7) ---------------------------


def _vit_digits():
    from conftest import DigitsClassifier

    class ViTDigits(DigitsClassifier):  # torchvision's ViT, tiny, on the digits as three channels
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2,
                                                            hidden_dim=8, mlp_dim=16, num_classes=10)

        def forward(self, x):
            return self.net(x.expand(-1, 3, -1, -1))

    return ViTDigits()


def _neurons(**kwargs):
    from conftest import digits_task

    from compass_lightning import NeuronAnalysis

    return NeuronAnalysis(probe_size=16, profile_size=32, image_count=0, task=digits_task(), **kwargs)


def test_a_vision_transformer_is_analysed_without_the_attention_projection_it_never_calls(tmp_path):
    from conftest import DigitsDataModule, assert_monitor_ran, make_trainer

    monitor = _neurons()
    make_trainer(tmp_path, [monitor], logger=False).fit(_vit_digits(), datamodule=DigitsDataModule())
    assert_monitor_ran(monitor, "compass/neurons/coverage/nc", "compass/neurons/sensitivity/fraction")
    assert "net.encoder.layers.encoder_layer_0.mlp.0" in monitor._layer_names
    assert not any(name.endswith("out_proj") for name in monitor._layer_names)  # nn.MultiheadAttention's, never called
    named = _neurons(layers=["net.encoder.layers.encoder_layer_0.self_attention.out_proj"], deviation=False)
    with pytest.raises(ValueError, match="layers: layer '.*out_proj' is never called in a forward pass"):
        make_trainer(tmp_path, [named], logger=False).fit(_vit_digits(), datamodule=DigitsDataModule())


def test_a_compiled_model_is_analysed_through_its_modules(tmp_path):
    from conftest import DigitsClassifier, DigitsDataModule, assert_monitor_ran, make_trainer

    monitor = _neurons()
    make_trainer(tmp_path, [monitor], logger=False, epochs=1).fit(
        torch.compile(DigitsClassifier(), backend="eager"), datamodule=DigitsDataModule())
    assert_monitor_ran(monitor, "compass/neurons/coverage/nc", "compass/neurons/sensitivity/fraction")
