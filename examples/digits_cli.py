"""The digits example as a LightningCLI script, so monitors can be added from YAML presets.

    python examples/digits_cli.py fit --config callbacks/mutation.yaml --trainer.max_epochs=5
    tensorboard --logdir lightning_logs
"""

from lightning.pytorch.cli import LightningCLI

from digits import DigitsClassifier, DigitsDataModule


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(DigitsClassifier, DigitsDataModule, args=args)


if __name__ == "__main__":
    main()
