"""``certify train``: train a zoo architecture with one of the certified-defense objectives,
checkpointing every epoch into a run directory, then evaluate it (clean, PGD-20 and certified
accuracy by the matching engine) in the common record format.

Run directory contents: ``config.yaml`` (the command's options: ``certify train --config
runs/NAME/config.yaml --out runs/OTHER`` runs it again), ``config.json`` (the architecture and
the training configuration), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (resumable training state), ``model.pt`` (certify checkpoint: usable by every
other command), ``model.onnx``, ``certify.jsonl`` (one record per test input) and ``eval.json``
(the summary).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from certify.errors import CertifyError

RUN_FILES = ("config.yaml", "config.json", "metrics.jsonl", "checkpoint.pt", "checkpoint.pt.tmp", "model.pt", "model.onnx",
             "certify.jsonl", "eval.json")

EPILOG = """\
objectives (eps is L-inf except for smoothadv, where it is the L2 attack radius):
  standard    cross-entropy
  pgd         Madry et al. 2018 PGD adversarial training (--attack-steps)
  trades      Zhang et al. 2019 TRADES (--trades-beta, --attack-steps)
  ibp         Gowal et al. 2018 interval bound propagation, kappa ramp (--kappa)
  crown-ibp   Zhang et al. 2020 CROWN-IBP, kappa and beta ramps (--kappa, --beta)
  gaussian    Cohen et al. 2019 Gaussian data augmentation (--sigma)
  smoothadv   Salman et al. 2019 SmoothAdv (--sigma, --noise-samples, --attack-steps)

example:
  certify train --data mnist --data-dir ../shared/data --model dm-small --objective crown-ibp \\
      --eps 0.1 --epochs 30 --out runs/dm-small-crownibp
"""


def _objectives():
    from certify.train.objectives import OBJECTIVES
    return list(OBJECTIVES)


def register(sub) -> None:
    from certify.cli.argtypes import finite_float, nonneg_float, positive_float
    from certify.cli.config import add_renamed
    from certify.models.zoo import ZOO
    p = sub.add_parser("train", help="train a model with a certified-defense objective, then evaluate it",
                       description="Train a zoo architecture (IBP, CROWN-IBP, PGD, TRADES, Gaussian, SmoothAdv or "
                                   "plain cross-entropy), checkpoint every epoch into --out, then report clean, "
                                   "PGD-20 and certified accuracy on the test split.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default="digits", help="data set: digits, mnist, fashion-mnist, cifar10 or a folder of "
                   "idx/npz files (default: digits)")
    g.add_argument("--data-dir", default=None, help="folder holding mnist/, fashion_mnist/, cifar10/ "
                   "(default: $CERTIFY_DATA)")
    g.add_argument("--subset", type=int, default=None, help="train on the first N training images only (quick runs)")
    g.add_argument("--model", default="dm-small", choices=sorted(ZOO), help="zoo architecture (default: dm-small)")
    g = p.add_argument_group("objective")
    g.add_argument("--objective", default="standard", choices=_objectives(), help="training objective (see below)")
    g.add_argument("--eps", type=finite_float, default=0.1, help="training and evaluation radius (default: 0.1)")
    g.add_argument("--eval-eps", type=finite_float, default=None, help="evaluation radius (default: --eps)")
    g.add_argument("--kappa", type=finite_float, nargs=2, default=None, metavar=("START", "END"),
                   help="natural-loss weight over the eps ramp (default: ibp 1 0.5, crown-ibp 1 0, others 1 1)")
    g.add_argument("--beta", type=finite_float, nargs=2, default=None, metavar=("START", "END"),
                   help="CROWN-IBP weight of the CROWN bound over the ramp (default: 1 0)")
    g.add_argument("--attack-steps", type=int, default=10, help="PGD steps of pgd / trades / smoothadv (default: 10)")
    g.add_argument("--trades-beta", type=finite_float, default=6.0, help="TRADES KL weight (default: 6)")
    g.add_argument("--sigma", type=finite_float, default=0.25, help="noise level of gaussian / smoothadv (default: 0.25)")
    g.add_argument("--noise-samples", type=int, default=1, help="SmoothAdv noise draws per input m (default: 1)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    g.add_argument("--batch-size", type=int, default=100, help="batch size (default: 100)")
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="optimizer (default: adam)")
    g.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default: 0.001)")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="weight decay (default: 0)")
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "step", "cosine"],
                   help="learning-rate schedule (default: constant)")
    g.add_argument("--lr-milestones", type=finite_float, nargs="*", default=[],
                   help="epochs at which 'step' multiplies the learning rate by --lr-gamma")
    g.add_argument("--lr-gamma", type=positive_float, default=0.1, help="'step' decay factor (default: 0.1)")
    g.add_argument("--warmup-epochs", type=finite_float, default=None,
                   help="epochs of natural training (eps 0) before the ramp (default: 0; 1 with --shi-init)")
    g.add_argument("--ramp-epochs", type=finite_float, default=None,
                   help="epochs over which eps, kappa and beta ramp (default: half the epochs for ibp / crown-ibp, "
                        "a tenth for smoothadv, 0 otherwise)")
    g.add_argument("--ramp", default=None, choices=["linear", "smooth"],
                   help="eps ramp shape (default: linear; smooth with --shi-init)")
    g.add_argument("--shi-init", action="store_true",
                   help="Shi et al. 2021 initialization with a one-epoch warm-up and the smooth eps ramp")
    g.add_argument("--clip-grad", type=positive_float, default=None, help="clip the gradient norm to this value")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-count", dest="eval_n", type=int, default=1000, help="test inputs to evaluate (default: 1000)")
    add_renamed(p, "--eval-n", "use --eval-count for the number of test inputs evaluated")
    g.add_argument("--eval-skip", type=int, default=1, help="evaluate every SKIP-th test input (default: 1)")
    g.add_argument("--certify-method", default="crown", choices=["crown", "alpha"],
                   help="bound method for bound-trained models (default: crown)")
    g.add_argument("--n0", type=int, default=100, help="smoothing: selection samples (default: 100)")
    g.add_argument("--samples", dest="n_smooth", type=int, default=10000,
                   help="smoothing: Monte-Carlo samples n of each certificate (default: 10000)")
    add_renamed(p, "--n-smooth", "use --samples for the smoothing sample count n")
    g.add_argument("--alpha", type=finite_float, default=0.001, help="smoothing: failure probability (default: 0.001)")
    g.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="run directory (refused if it holds a run, unless --resume or "
                   "--overwrite)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out (only its run files)")
    p.set_defaults(func=run)


def config_from_args(args):
    from certify.train.loop import TrainConfig
    obj = args.objective
    kappa = args.kappa or {"ibp": (1.0, 0.5), "crown-ibp": (1.0, 0.0)}.get(obj, (1.0, 1.0))
    beta = args.beta or ((1.0, 0.0) if obj == "crown-ibp" else (1.0, 1.0))
    warmup = args.warmup_epochs if args.warmup_epochs is not None else (1.0 if args.shi_init else 0.0)
    if args.ramp_epochs is not None:
        ramp_epochs = args.ramp_epochs
    elif obj in ("ibp", "crown-ibp"):
        ramp_epochs = max((args.epochs - warmup) / 2, 0.0)
    elif obj == "smoothadv":
        ramp_epochs = args.epochs / 10
    else:
        ramp_epochs = 0.0
    flags = getattr(args, "_flags", {})
    for dest in ("epochs", "batch_size", "attack_steps", "noise_samples", "eval_n", "eval_skip", "n0", "n_smooth"):
        if getattr(args, dest) < 1:
            flag = flags.get(dest, "--" + dest.replace("_", "-"))
            raise CertifyError(f"{flag} must be at least 1, got {getattr(args, dest)}")
    if args.eps < 0 or (args.eval_eps is not None and args.eval_eps < 0):
        raise CertifyError("--eps and --eval-eps must be non-negative")
    if obj in ("gaussian", "smoothadv") and args.sigma <= 0:
        raise CertifyError(f"--sigma must be positive, got {args.sigma}")
    for flag in ("warmup_epochs", "ramp_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise CertifyError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if not 0 < args.alpha < 0.5:
        raise CertifyError(f"--alpha must be in (0, 0.5), got {args.alpha}")
    return TrainConfig(objective=obj, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                       lr=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
                       lr_milestones=tuple(args.lr_milestones), lr_gamma=args.lr_gamma,
                       eps=0.0 if obj in ("standard", "gaussian") else args.eps, warmup_epochs=warmup,
                       ramp_epochs=ramp_epochs, ramp=args.ramp or ("smooth" if args.shi_init else "linear"),
                       kappa=tuple(kappa), beta=tuple(beta), clip_grad=args.clip_grad, seed=args.seed,
                       shi_init=args.shi_init, attack_steps=args.attack_steps, trades_beta=args.trades_beta,
                       sigma=args.sigma, noise_samples=args.noise_samples)


def _prepare_run_dir(out: str, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise CertifyError("--resume and --overwrite exclude each other")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CertifyError(f"--out {out} is a file, not a run directory")
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if resume:
        if not os.path.exists(os.path.join(out, "checkpoint.pt")):
            raise CertifyError(f"--resume: {out} holds no checkpoint.pt to continue from")
        return
    if existing and not overwrite:
        raise CertifyError(f"run directory {out} already holds a run ({', '.join(existing)}); "
                           "pass --resume to continue it or --overwrite to replace it")
    for f in existing:
        os.remove(os.path.join(out, f))
    os.makedirs(out, exist_ok=True)


def _write_config(args) -> None:
    """runs/NAME/config.yaml: this command line's options (``certify.cli.config``), without the
    flags that only say how to treat an existing run folder."""
    from certify.cli.config import dump_config
    config = {k: v for k, v in getattr(args, "_config", {}).items() if k not in ("resume", "overwrite")}
    if config:
        with open(os.path.join(args.out, "config.yaml"), "w") as f:
            f.write(dump_config(config))


def run(args) -> int:
    import torch

    from certify.data import load_dataset
    from certify.models.zoo import build, save_checkpoint
    from certify.train.evaluate import evaluate_model
    from certify.train.loop import train

    cfg = config_from_args(args)
    _prepare_run_dir(args.out, args.resume, args.overwrite)
    X, y = load_dataset(args.data, "train", args.data_dir)
    if args.subset is not None:
        if args.subset < 1:
            raise CertifyError(f"--subset must be at least 1, got {args.subset}")
        X, y = X[:args.subset], y[:args.subset]
    K = int(y.max()) + 1 if len(y) else 10
    cfg.num_classes = max(K, 2)
    input_shape = tuple(X.shape[1:])
    torch.manual_seed(cfg.seed)
    model = build(args.model, input_shape, cfg.num_classes)
    _write_config(args)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({"model": args.model, "data": args.data, "subset": args.subset, "input_shape": list(input_shape),
                   "train": cfg.to_dict(), "argv": sys.argv[1:]}, f, indent=1)
    print(f"training {args.model} ({sum(p.numel() for p in model.parameters())} parameters) on {len(X)} "
          f"{args.data} images with {cfg.objective}, eps {cfg.eps}, {cfg.epochs} epochs -> {args.out}", file=sys.stderr)
    history = train(model, X, y, cfg, run_dir=args.out, resume=args.resume, progress=True)
    model_path = os.path.join(args.out, "model.pt")
    save_checkpoint(model_path, model, args.model, input_shape, cfg.num_classes,
                    meta={"trained_by": "certify train", "train": cfg.to_dict(), "data": args.data,
                          "subset": args.subset, "epochs_done": len(history)})
    from certify.train.loop import ir_network
    net = ir_network(model, input_shape)
    onnx_path = os.path.join(args.out, "model.onnx")
    if os.path.exists(onnx_path):          # a resumed run: the export of the same run, replaced
        os.remove(onnx_path)
    net.to_onnx(onnx_path)
    last = history[-1] if history else {}
    print("last epoch: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    if args.no_eval:
        return 0
    summary = evaluate_model(model, args, cfg, net)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"evaluation on {summary['n']} {args.data} test images at {summary['norm']} eps {summary['eps']}: "
          f"clean {summary['clean_acc']:.4f}, PGD-20 {summary['pgd20_acc']:.4f}, certified "
          f"{summary['certified_acc']:.4f} ({summary['engine']} {summary['method']}) -> "
          f"{os.path.join(args.out, 'certify.jsonl')}")
    return 0
