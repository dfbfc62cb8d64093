"""The digits example as a LightningCLI script, so monitors can be added from YAML presets.

    python examples/digits_cli.py fit --config callbacks/mutation.yaml --trainer.max_epochs=5
    tensorboard --logdir lightning_logs

The presets (``callbacks/*.yaml``) read the data with the default task, pixels in ``[0, 1]``, so
here the data module hands out pixels and the model normalises them in its ``forward``. A data
module that normalises needs the preset's ``task`` uncommented with its statistics (a run without
them stops at fit start saying so); ``--data.normalise=true --model.normalise_inputs=false`` shows it.
"""

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from digits import DigitsClassifier, DigitsDataModule


class DigitsCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the model normalises, so what the monitors see is pixels: the presets' default task is right
        parser.set_defaults({"data.normalise": False, "model.normalise_inputs": True})


def main(args: list[str] | None = None) -> LightningCLI:
    return DigitsCLI(DigitsClassifier, DigitsDataModule, args=args)


if __name__ == "__main__":
    main()
