"""Data-parallel throughput: craft's step on 1 and on N processes, and the all-reduce share of a step.

Each world size trains the same model on the same global batch (each rank
its slice), with the step ``python -m craft`` builds under torchrun
(gradients averaged by bucketed all-reduces inside the compiled step). The
processes share the machine's cores: on the CPU, each of N processes gets
``cores / N`` threads. The all-reduce share is the median time of the
gradient all-reduce alone (the same buckets, the same tree) over the median
step time. On a machine with several GPUs, the world sizes go up to the
number of GPUs (NCCL) and the table adds scaling efficiency:
``samples/s at N / (N x samples/s at 1)``.

Every world size is launched ``--repeats`` times, the world sizes alternating
(1, 2, ..., then the reverse order, ...), so drift of a shared machine is
spread over all of them; cells are median (min-max) over the launches, and
ratios are taken between launches of the same repeat.

    python benchmarks/ddp_speed.py [--model cnn|gpt] [--steps 30] [--max_world 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp
from common import print_table, ratio, spread, sync

from craft import distributed
from craft.models import SmallCNN
from craft.models.gpt import GPTConfig
from craft.optim import adamw
from craft.step import init_state, make_train_step
from craft.tasks import classification_loss, language_model_loss


def model_and_batch(name: str, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    if name == "cnn":
        model = SmallCNN(num_classes=10)
        data = {"image": torch.randn(batch, 3, 32, 32, generator=g), "label": torch.randint(0, 10, (batch,), generator=g)}
        return model.to(device), data, lambda b: (b["image"],), classification_loss
    model = GPTConfig(vocab_size=103, block_size=64).build()
    tokens = torch.randint(0, 103, (batch, 65), generator=g)
    data = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
    return model.to(device), data, lambda b: (b["input"],), language_model_loss


def worker(rank: int, world: int, port: int, args, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(max(1, args.cores // world))
    replicas = distributed.from_env()
    device = replicas.device or torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model, batch, inputs, loss = model_and_batch(args.model, args.batch, device)
    shard = {k: v[rank * args.batch // world : (rank + 1) * args.batch // world].to(device) for k, v in batch.items()}
    tx = adamw(1e-3, clip_norm=1.0)
    step = make_train_step(model, loss, tx, inputs=inputs, donate=True, cross_replica_mean=replicas.mean())
    state = init_state(model, tx)
    replicas.broadcast(state)

    def timed(fn) -> list[float]:
        out = []
        for _ in range(args.steps):
            sync(device)
            replicas.barrier()
            t = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t)
        return out

    box = [state]

    def one_step():
        box[0], _ = step(box[0], shard)

    for _ in range(5):
        one_step()
    step_s = statistics.median(timed(one_step))
    reduce_s = 0.0
    if replicas.active:  # the gradient all-reduce alone: same tree, same buckets, eager
        mean, grads = replicas.mean(), {k: torch.randn_like(v) for k, v in box[0].params.items()}
        reduce_s = statistics.median(timed(lambda: mean(grads)))
    if rank == 0:
        results[world, args.repeat] = (step_s, reduce_s)
    distributed.close(replicas, wait=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "gpt"], default="cnn")
    parser.add_argument("--batch", type=int, default=None, help="global batch (cnn 128, gpt 12)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max_world", type=int, default=None, help="largest world size (default: GPUs, or 2 on the CPU)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--repeats", type=int, default=3, help="launches of each world size, alternating")
    args = parser.parse_args()
    args.batch = args.batch or (128 if args.model == "cnn" else 12)
    gpus = torch.cuda.device_count()
    top = args.max_world or (gpus if gpus > 1 else 2)
    worlds = [w for w in (1, 2, 4, 8, 16) if w <= top and args.batch % w == 0]
    results = mp.Manager().dict()
    for repeat in range(args.repeats):
        args.repeat = repeat
        for world in worlds[:: 1 if repeat % 2 == 0 else -1]:
            mp.spawn(worker, args=(world, free_port(), args, results), nprocs=world, join=True)
            print(f"world size {world}, launch {repeat + 1}/{args.repeats}: done", flush=True)

    device = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else f"cpu, {args.cores} cores shared"
    print(
        f"\n{args.model}, global batch {args.batch}, {device}, torch {torch.__version__}; per launch the median of "
        f"{args.steps} steps; cells: median (min-max) over {args.repeats} alternating launches"
    )
    step = {w: [results[w, r][0] for r in range(args.repeats)] for w in worlds}
    rows = []
    for world in worlds:
        scaled = [s * world for s in step[world]]  # seconds per step x N: efficiency is (1-process seconds) / this
        share = [results[world, r][1] / results[world, r][0] for r in range(args.repeats)]
        rows.append([
            str(world), spread(step[world], 1e3), spread([args.batch / s for s in step[world]], fmt=",.0f"),
            ratio(step[1], step[world]), ratio(step[1], scaled).replace("x", "", 1),
            spread(share, 100, ".0f") + " %" if world > 1 else "n/a",
        ])
    print_table(
        ["processes", "ms/step", "samples/s", "vs 1 process", "scaling efficiency", "all-reduce share"], rows
    )

if __name__ == "__main__":
    main()
