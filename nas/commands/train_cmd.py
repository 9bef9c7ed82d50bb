"""``nas train`` and ``nas distill``: train an Arch from scratch, or distill it from teachers.

With ``--json`` the last line of standard output is one JSON object with at least
``test_accuracy``, ``val_accuracy``, ``train_seconds`` and ``params``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nas.errors import NasInputError
from nas.space_files import add_space_option
from nas.runs.workdir import add_resume_flag, locked_command


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help="data spec: digits (default), synthetic, npz:PATH, mnist:DIR, cifar10:DIR, folder:DIR")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--workdir", default=None,
                   help="folder for checkpoints, arch.json, metrics.jsonl, tb/, result.json; "
                        "an existing one is resumed (default: write nothing)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--quantizer", choices=("lsq", "minmax"), default="lsq",
                   help="quantizer steps: lsq = learned (LSQ, default), minmax = follow max |w| "
                        "and the running max |x| of activations")
    p.add_argument("--seed", type=int, default=0, help="seed of init, shuffling, dropout")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    p.add_argument("--folds", type=int, default=0,
                   help="K-fold cross-validation: train on fold --fold of K (default off)")
    p.add_argument("--fold", type=int, default=0, help="which fold is validation (0..K-1)")
    p.add_argument("--devices", type=int, default=0,
                   help="local devices to train on, data-parallel (default 0: all; the batch "
                        "must split evenly)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="end with one JSON line of results")
    add_space_option(p)
    add_resume_flag(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``train`` and ``distill`` commands."""
    t = sub.add_parser("train", help="train an Arch from scratch, or fine-tune a trained one",
                       description="Train an Arch from scratch, or fine-tune trained weights "
                                   "(--init); resumes from --workdir's checkpoints.")
    t.add_argument("--arch", default=None,
                   help="arch JSON file ({\"space\": ..., \"arch\": {...}}); with --init, "
                        "default: that folder's arch.json")
    t.add_argument("--init", default=None, metavar="DIR",
                   help="fine-tune: start from the weights of a trained work directory (a 'nas "
                        "train' or 'nas distill' workdir, or the child/ folder of a spos, "
                        "single_path or 'nas specialize' run) instead of a fresh init; its Arch "
                        "must be --arch's")
    _add_common(t)
    t.set_defaults(func=locked_command("nas train", _train))
    d = sub.add_parser("distill", help="train a student Arch by knowledge distillation",
                       description="Train a student Arch with Hinton KD (and optional FitNets "
                                   "hints) from trained teacher work directories.")
    d.add_argument("--student", required=True, help="student arch JSON file")
    d.add_argument("--teacher", required=True, action="append",
                   help="work directory of a finished 'nas train' run; repeat for an ensemble")
    d.add_argument("--temperature", type=float, default=4.0, help="softmax temperature (default 4)")
    d.add_argument("--kd-weight", type=float, default=0.7,
                   help="weight of the soft-target loss in [0, 1] (default 0.7)")
    d.add_argument("--hint-weight", type=float, default=0.0,
                   help="weight of the FitNets hint loss (default 0: off)")
    d.add_argument("--student-layer", default=None, help="student hint block (default: last)")
    d.add_argument("--teacher-layer", default=None, help="teacher hint block (default: last)")
    _add_common(d)
    d.set_defaults(func=locked_command("nas distill", _distill))


def _config(args: argparse.Namespace):
    from nas.training.trainer import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                       learning_rate=args.lr, weight_decay=args.weight_decay,
                       warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                       seed=args.seed, progress=not args.no_progress,
                       quantizer=args.quantizer, devices=args.devices).validate()


def _data(args: argparse.Namespace, space):
    from nas.data import load_data

    data = load_data(args.data, space, seed=args.split_seed)
    if args.folds:
        if not 0 <= args.fold < args.folds:
            raise NasInputError(f"{args.fold} is not allowed; expected 0 <= fold < {args.folds}",
                                field="--fold")
        data = data.fold(args.fold, args.folds, args.split_seed)
    return data


def _report(result: dict[str, Any], as_json: bool) -> int:
    out = {k: v for k, v in result.items() if k != "state"}
    if as_json:
        print(json.dumps(out))
    else:
        print(f"arch {out['arch_id']} ({out['space']}): test accuracy {out['test_accuracy']:.4f}, "
              f"val accuracy {out['val_accuracy']:.4f}, {out['params']} params, "
              f"{out['train_seconds']:.1f} s training ({out['epochs']} epochs, "
              f"{out.get('devices', 1)} device(s))")
    return 0


def _train(args: argparse.Namespace) -> int:
    from nas.archfile import load_arch
    from nas.training.trainer import train_arch

    config = _config(args)
    initial = None
    if args.init is not None:
        from nas.training.checkpoint import load_trained

        init_af, _, initial, _ = load_trained(args.init, config.depthwise_impl)
        af = init_af if args.arch is None else load_arch(args.arch, args.space)
        if af.space.arch_id(af.arch) != init_af.space.arch_id(init_af.arch) or \
                af.space.name != init_af.space.name:
            raise NasInputError(f"--init holds Arch {init_af.space.arch_id(init_af.arch)} of "
                                f"space {init_af.space.name!r}, --arch is "
                                f"{af.space.arch_id(af.arch)} of {af.space.name!r}; leave --arch "
                                "out to fine-tune the folder's own Arch", args.init, "--init")
    elif args.arch is None:
        raise NasInputError("give the Arch to train: --arch FILE (or --init DIR to fine-tune "
                            "a trained one)", field="--arch")
    else:
        af = load_arch(args.arch, args.space)
    data = _data(args, af.space)
    result = train_arch(af.space, af.arch, data, config, workdir=args.workdir, initial=initial)
    if args.init is not None:
        result["init"] = str(args.init)
    return _report(result, args.json)


def _distill(args: argparse.Namespace) -> int:
    from nas.archfile import load_arch
    from nas.training.checkpoint import load_trained
    from nas.training.distill import DistillConfig, distill_arch

    config = _config(args)
    dconfig = DistillConfig(temperature=args.temperature, kd_weight=args.kd_weight,
                            hint_weight=args.hint_weight, student_layer=args.student_layer,
                            teacher_layer=args.teacher_layer).validate()
    af = load_arch(args.student, args.space)
    space = af.space
    teachers, ids = [], []
    for path in args.teacher:
        taf, tmodel, tvars, _ = load_trained(path, config.depthwise_impl)
        ts = taf.space
        if (ts.resolution, ts.in_channels, ts.num_classes) != \
                (space.resolution, space.in_channels, space.num_classes):
            raise NasInputError(f"teacher space {ts.name!r} takes {ts.resolution}x{ts.in_channels} "
                                f"inputs and {ts.num_classes} classes, the student's "
                                f"{space.resolution}x{space.in_channels} and {space.num_classes}; "
                                "use a teacher with the same input and classes", path)
        teachers.append((tmodel, tvars))
        ids.append(ts.arch_id(taf.arch))
    data = _data(args, space)
    result = distill_arch(space, af.arch, data, config, dconfig, teachers, workdir=args.workdir,
                          teacher_ids=ids)
    return _report(result, args.json)
