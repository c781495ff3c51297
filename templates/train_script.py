"""A starting training script, written by `stjobs init --script` (edit it: it is yours now).

As the sentence-transformers docs write one: all the work inside ``main()``, under ``if __name__ == "__main__"``, so
torchrun's and the DataLoader's processes can import this file without starting a second training. The lines
marked ``stjobs:`` make it resumable: when SLURM warns of the time limit or a preemption, every rank finishes its
step, a checkpoint is saved, the process exits 0 and the job is requeued; the next run resumes from the newest
complete checkpoint in the output directory.

The spec's ``entrypoint.args`` pass ``--model`` and ``--train-data`` (a JSON-lines file of anchor/positive pairs);
stjobs hands the spec's ``output_dir`` over as ``STJOBS_OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description="Fine-tune a SentenceTransformer on anchor/positive pairs.")
    parser.add_argument("--model", required=True, help="a model name or directory")
    parser.add_argument("--train-data", required=True, help="a JSON-lines file of anchor/positive pairs")
    parser.add_argument("--output-dir", default=os.environ.get("STJOBS_OUTPUT_DIR"),
                        help="checkpoints and the final model (default: $STJOBS_OUTPUT_DIR, set by stjobs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--per-device-batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--save-steps", type=int, default=500)
    args = parser.parse_args()
    if not args.output_dir:
        parser.error("--output-dir is required outside stjobs (stjobs sets STJOBS_OUTPUT_DIR)")

    # Imported here, not at the top: `python train.py --help` and stjobs' checks stay fast.
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    from stjobs.train import model_path
    from stjobs.train.callbacks import PreemptionCallback, resume_checkpoint  # stjobs: the import

    model = SentenceTransformer(model_path(args.model))  # a name stjobs resolves offline, else as given
    train = Dataset.from_json(args.train_data)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.per_device_batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=0.1,
        save_steps=args.save_steps,
        logging_steps=10,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # on CPUs: gloo across the ranks rather than one run per rank
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        loss=losses.MultipleNegativesRankingLoss(model),
        callbacks=[PreemptionCallback()],  # stjobs: save and exit 0 when the scheduler warns
    )
    checkpoint = resume_checkpoint(args.output_dir)  # stjobs: the newest complete checkpoint, or None
    if checkpoint and trainer.is_world_process_zero():
        print(f"resuming from {checkpoint}", flush=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.is_world_process_zero():
        model.save_pretrained(os.path.join(args.output_dir, "final"))
        print(f"trained to step {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
