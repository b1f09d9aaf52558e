"""Train an ensemble of CNNs in one step function; compare the ensemble with its members.

K copies of the seed CNN, each from its own seed, train together through one
``make_ensemble_step`` on the same batches of synthetic shapes (rendered in
memory). The ensemble predicts with the mean of its members' probabilities.

    python experiments/ensemble.py [--members 4] [--steps 300] [--tiny]
"""

from __future__ import annotations

import argparse

import torch

from craft.data import ShapesConfig
from craft.ensemble import init_ensemble, make_ensemble_step, member_outputs
from craft.models import SmallCNN
from craft.optim import adamw, warmup_cosine
from craft.tasks import classification_loss, image_inputs


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few images (the test suite's run)")
    args = parser.parse_args(argv)
    steps, images = (3, 64) if args.tiny else (args.steps, 6000)

    data = ShapesConfig(num_train=images, num_val=images // 4, batch_size=64)
    train, val = data.build("train", seed=0), data.build("val", seed=0)
    classes = len(data.classes)
    tx = adamw(warmup_cosine(3e-3, total_steps=steps, warmup_ratio=0.1), weight_decay=0.01, clip_norm=1.0)
    model, state = init_ensemble(lambda: SmallCNN(classes), tx, seeds=range(args.members))
    step = make_ensemble_step(model, classification_loss, tx, inputs=image_inputs, compile=not args.tiny)

    for i in range(1, steps + 1):
        state, metrics = step(state, next(train))
        if i % 50 == 0 or i == steps:
            print(f"step {i:4d}  member losses " + " ".join(f"{v:.3f}" for v in metrics["loss"].tolist()))

    correct, ensemble_correct, total = torch.zeros(args.members), 0, 0
    for batch in val:
        logits = member_outputs(model, state, batch["image"])  # (K, B, classes)
        correct += (logits.argmax(-1) == batch["label"]).sum(1)
        ensemble_correct += int((logits.softmax(-1).mean(0).argmax(-1) == batch["label"]).sum())
        total += len(batch["label"])
    members, ensemble = (correct / total).tolist(), ensemble_correct / total
    print("member accuracy   " + " ".join(f"{a:.1%}" for a in members))
    print(f"ensemble accuracy {ensemble:.1%} (best member {max(members):.1%})")
    return {"members": members, "ensemble": ensemble}


if __name__ == "__main__":
    main()
