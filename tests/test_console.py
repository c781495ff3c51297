"""The person's view of a job's output (issue 16, "Progress, not JSON"): a real 2-rank job's log seen piped and on
a terminal, chunks split anywhere, tracebacks and errors of any rank, the hidden-lines hint, the live line's width,
the ETA (from the events' samples/s or their arrival times) and the node script's own lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from stjobs.console import ConsoleView, events_only, view
from stjobs.train.events import format_event, parse_events

START = ('{"backend":"gloo","datasets":[{"kind":"labelled","loss":"SoftmaxLoss","name":"nli","rows":2000},'
         '{"kind":"scored","loss":"CosineSimilarityLoss","name":"stsb","rows":2000}],"event":"start",'
         '"global_batch_size":32,"kind":"labelled+scored","learning_rate":0.001,"local_rank":%d,'
         '"loss":"SoftmaxLoss+CosineSimilarityLoss","model":"tiny-bert","per_device_batch_size":16,"rank":%d,'
         '"strategy":"ddp","train_rows":4000,"world_size":2}')
WRAPPED = ('{"as_requested":true,"distributed_type":"MULTI_CPU","event":"wrapped","model_wrapper":'
           '"DistributedDataParallel","precision":"fp32","ran":"ddp","rank":%d,"requested":"ddp"}')

# nli-stsb-20261202-022007-7c39 (a finished 2-rank local job), trimmed: `stjobs logs` of it, as the CLI gets it.
REAL_LOG = f"""\
[rank0]:STJOBS_EVENT {START % (0, 0)}
[rank0]:STJOBS_EVENT {{"event":"unused","ignored_by_ddp":true,"parameters":["0.model.pooler.dense.weight"],"rank":0}}
[rank1]:STJOBS_EVENT {START % (1, 1)}
[rank0]:STJOBS_EVENT {WRAPPED % 0}
[rank1]:STJOBS_EVENT {WRAPPED % 1}
[rank0]:Column 'hypothesis' is at index 1, whereas a column with this name is usually expected at index 0. Note...
[rank0]:dataset = dataset.select_columns(['hypothesis', 'entailment', 'contradiction'])
[rank0]:STJOBS_EVENT {{"event":"eval","metric":"spearman_cosine","rank":0,"score":0.8221821261505183,"step":0,"when":"before"}}
[rank0]:STJOBS_EVENT {{"event":"loss","loss":0.6974406242370605,"losses":{{"nli":1.0371908664703369,"stsb":0.3576904058456421}},"rank":0,"step":10}}
[rank0]:STJOBS_EVENT {{"event":"loss","loss":0.4790035247802734,"losses":{{"nli":1.1375288565953572,"stsb":0.19677836554391043}},"rank":0,"step":20}}
[rank0]:STJOBS_EVENT {{"event":"loss","loss":0.25341508388519285,"losses":{{"nli":0.7305837472279867,"stsb":0.04891422816685268}},"rank":0,"step":60}}
[rank0]:STJOBS_EVENT {{"event":"throughput","global_batch_size":32,"rank":0,"samples_per_second":536.392,"seconds":3.579,"steady_samples_per_second":537.958,"steady_steps":54,"steps":60}}
[rank0]:STJOBS_EVENT {{"event":"eval","metric":"spearman_cosine","rank":0,"score":0.8357769743558969,"step":60,"when":"after"}}
[rank0]:STJOBS_EVENT {{"event":"saved","path":"/work/main/outputs/nli-stsb/final","rank":0}}
[rank0]:stjobs.train: trained 60 steps in 3.6 s: 536.4 samples/s (global batch 32)
[rank0]:stjobs.train: eval spearman_cosine: 0.8222 -> 0.8358
[rank0]:stjobs.train: model saved to /work/main/outputs/nli-stsb/final
[rank0]:STJOBS_EVENT {{"event":"done","global_step":60,"rank":0}}
"""  # noqa: E501

HEAD = "training tiny-bert: labelled+scored with SoftmaxLoss+CosineSimilarityLoss, 2 processes (ddp), 32 per step"
STEPS = ["step 10  loss 0.697 (nli 1.037, stsb 0.358)", "step 20  loss 0.479 (nli 1.138, stsb 0.197)",
         "step 60  loss 0.253 (nli 0.731, stsb 0.049)"]
TAIL = ["eval spearman_cosine 0.8358 (after)",
        "stjobs.train: trained 60 steps in 3.6 s: 536.4 samples/s (global batch 32)",
        "stjobs.train: eval spearman_cosine: 0.8222 -> 0.8358",
        "stjobs.train: model saved to /work/main/outputs/nli-stsb/final",
        "(4 lines of library output not shown: stjobs logs JOB --raw)"]  # rank 1's start and wrapped, 2 notices


def still() -> float:
    return 0.0


def seen(text: str | list[str], tty: bool = False, **options: Any) -> str:
    chunks = [text] if isinstance(text, str) else text
    return "".join(view(chunks, tty=tty, clock=options.pop("clock", still), **options))


def ev(event: str, rank: int = 0, **fields: Any) -> str:
    return f"[rank{rank}]:" + format_event(event, rank=rank, **fields) + "\n"


def test_real_log_piped_is_plain_lines() -> None:
    assert seen(REAL_LOG).splitlines() == [HEAD, "eval spearman_cosine 0.8222 (before)", *STEPS, *TAIL]


def test_real_log_on_a_terminal_redraws_one_live_line() -> None:
    out = seen(REAL_LOG, tty=True)
    redraws = "".join(f"\r{step}\x1b[K" for step in STEPS)
    assert out == (f"{HEAD}\neval spearman_cosine 0.8222 (before)\n{redraws}\n" + "\n".join(TAIL) + "\n")
    assert out.endswith("\n") and out.count("\x1b[K") == 3


@pytest.mark.parametrize("size", [1, 7, 64, 333])
@pytest.mark.parametrize("tty", [False, True])
def test_chunks_split_mid_line_give_the_same_output(size: int, tty: bool) -> None:
    chunks = [REAL_LOG[i:i + size] for i in range(0, len(REAL_LOG), size)]
    assert seen(chunks, tty=tty) == seen(REAL_LOG, tty=tty)


def test_a_last_line_without_newline_is_flushed_by_close() -> None:
    console = ConsoleView(tty=False)
    assert console.feed("[rank0]:stjobs.train: model saved") == ""
    assert console.feed(" to /x") == ""
    assert console.close() == "stjobs.train: model saved to /x\n"


TRACEBACK = """\
[rank1]:Traceback (most recent call last):
[rank1]:  File "/work/main/stjobs/train/run.py", line 12, in main
[rank1]:    load(path)
[rank1]:    ^^^^^^^^^^
[rank1]:FileNotFoundError: [Errno 2] No such file or directory: 'data/train.jsonl'
[rank1]:some library noise after it
"""


def test_a_traceback_on_rank_1_is_shown_whole_with_its_rank() -> None:
    out = seen(ev("start", rank=0, world_size=2, global_batch_size=8, model="m", kind="pair", loss="L",
                  strategy="ddp") + "[rank0]:W1202 some warning\n" + TRACEBACK)
    assert out.splitlines() == [
        "training m: pair with L, 2 processes (ddp), 8 per step",
        "rank 1: Traceback (most recent call last):",
        'rank 1:   File "/work/main/stjobs/train/run.py", line 12, in main',
        "rank 1:     load(path)",
        "rank 1:     ^^^^^^^^^^",
        "rank 1: FileNotFoundError: [Errno 2] No such file or directory: 'data/train.jsonl'",
        "(2 lines of library output not shown: stjobs logs JOB --raw)",
    ]


SAME, RANKED = "same", "ranked"  # shown as it is without its rank prefix; after `rank N: ` instead of it
HINT1 = "(1 line of library output not shown: stjobs logs JOB --raw)\n"


@pytest.mark.parametrize("line, shown", [
    ("[rank0]:stjobs.train: warning: the loss's own weights differ", SAME),
    ("[rank1]:stjobs.train: note", RANKED),
    ("[rank0]:stjobs: dataset check passed", SAME),
    ("[rank1]:RuntimeError: NCCL error in: ProcessGroupNCCL.cpp", RANKED),
    ("[rank0]:torch.distributed.DistNetworkError: connect failed", RANKED),
    ("stjobs: node 0 of 2: torchrun on vm", SAME),  # the node script's own lines, and torchrun's
    ("W1202 02:20:09 torch/distributed/run.py: Setting OMP_NUM_THREADS", SAME),
    ("[default1]:ValueError: bad value", "rank 1: ValueError: bad value"),  # torchrun's own prefix
    ("[rank0]:Map: 100%|##########| 2000/2000 [00:00<00:00, 9000 examples/s]", None),
    ("[rank0]: 10%|#   |\r 50%|##  |\r100%|####|", None),
    ("[rank0]:/venv/lib/transformers/x.py:12: FutureWarning: `tokenizer` is deprecated", None),
    ("[rank1]:" + format_event("loss", rank=1, step=3, loss=0.1), None),
    ("[rank0]:STJOBS_EVENT {\"event\":\"lo", None),  # cut JSON
])
def test_which_lines_are_shown(line: str, shown: str | None) -> None:
    if shown == SAME:
        shown = line.removeprefix("[rank0]:")
    elif shown == RANKED:
        shown = f"rank {line[5]}: {line[8:]}"
    assert seen(line + "\n") == (f"{shown}\n" if shown is not None else HINT1)


@pytest.mark.parametrize("event, fields, said", [
    ("wrapped", {"as_requested": False, "requested": "fsdp", "ran": "ddp", "distributed_type": "MULTI_CPU",
                 "model_wrapper": "DistributedDataParallel"},
     "warning: asked for fsdp, the libraries ran ddp (MULTI_CPU, DistributedDataParallel)"),
    ("wrapped", {"as_requested": True, "requested": "ddp", "ran": "ddp"}, None),
    ("resumed", {"checkpoint": "/out/checkpoints/checkpoint-40", "step": 40},
     "resumed from /out/checkpoints/checkpoint-40"),
    ("preempted", {"step": 40, "checkpoint": "/c/checkpoint-40", "signal": "SIGUSR2"},
     "preempted by SIGUSR2 at step 40: saved /c/checkpoint-40 to resume from"),
    ("already_complete", {"step": 60, "path": "/out/final", "max_steps": 60, "epochs": None},
     "already complete: /out/final holds the model trained to step 60"),
    ("checkpoint_skipped", {"checkpoint": "/c/checkpoint-20", "reason": "no trainer_state.json"},
     "skipped checkpoint /c/checkpoint-20: no trainer_state.json"),
    ("no_evaluator", {"data": "nli.jsonl", "kind": "labelled"},
     "not evaluated: no evaluator for labelled data nli.jsonl"),
    ("loss_weights", {"parameters": 2, "same_on_every_rank": False},
     "warning: the loss's own weights differ between ranks"),
    ("loss_weights", {"parameters": 2, "same_on_every_rank": True}, None),
    ("eval", {"when": "during", "metric": "spearman_cosine", "score": 0.81234, "step": 40},
     "eval spearman_cosine 0.8123 (during, step 40)"),
    ("throughput", {"samples_per_second": 1.0, "steps": 3}, None),
    ("saved", {"path": "/out/final"}, None),
    ("done", {"global_step": 3}, None),
    ("unused", {"parameters": ["pooler"], "ignored_by_ddp": True}, None),
])
def test_events_worth_a_word(event: str, fields: dict[str, Any], said: str | None) -> None:
    assert seen(ev(event, **fields)) == (f"{said}\n" if said else "")
    assert seen(ev(event, rank=1, **fields)) == HINT1  # another rank's copy is noise


def start(**fields: Any) -> str:
    base: dict[str, Any] = {"world_size": 1, "global_batch_size": 32, "model": "m", "kind": "pair", "loss": "L",
                            "strategy": "single", "max_steps": 60, "epochs": None}
    return ev("start", **{**base, **fields})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_from_arrival_times_with_a_fake_clock() -> None:
    clock = Clock()
    console = ConsoleView(tty=False, clock=clock)
    assert console.feed(start()) == "training m: pair with L, 1 process (single), 32 per step, 60 steps\n"
    assert console.feed(ev("loss", step=10, loss=0.5)) == "step 10/60  loss 0.500\n"  # no rate yet
    clock.now += 2.0
    assert console.feed(ev("loss", step=20, loss=0.25)) == "step 20/60  loss 0.250  160 samples/s  ETA 8s\n"
    clock.now += 0.5  # 20 steps in 2.5 s over the window: 8 a second, 30 left
    assert console.feed(ev("loss", step=30, loss=0.25)) == "step 30/60  loss 0.250  256 samples/s  ETA 4s\n"


def test_eta_from_the_events_samples_per_second() -> None:
    out = seen(start(max_steps=1000) + ev("loss", step=100, loss=0.4, samples_per_second=64.0))
    assert out.splitlines()[1] == "step 100/1000  loss 0.400  64 samples/s  ETA 7m30s"


def test_a_replayed_log_measures_no_rate_and_epochs_give_no_total() -> None:
    out = seen(start(max_steps=None, epochs=1) + ev("loss", step=10, loss=0.4) + ev("loss", step=20, loss=0.3),
               clock=Clock())
    assert out.splitlines() == ["training m: pair with L, 1 process (single), 32 per step, 1 epoch(s)",
                                "step 10  loss 0.400", "step 20  loss 0.300"]


def test_the_live_line_is_cut_to_the_width() -> None:
    out = seen(start() + ev("loss", step=10, loss=0.5, losses={"nli": 1.0, "stsb": 0.25}), tty=True, width=20)
    live = out.split("\n")[1]
    assert live == "\r" + "step 10/60  loss 0.500 (nli 1.000, stsb 0.250)"[:20] + "\x1b[K"
    assert out.endswith("\x1b[K\n")


def test_a_line_ends_the_live_line_first_on_a_terminal() -> None:
    out = seen(start() + ev("loss", step=10, loss=0.5) + ev("eval", when="during", metric="m", score=0.5, step=10)
               + ev("loss", step=20, loss=0.4), tty=True)
    assert out.split("\n")[1:] == ["\rstep 10/60  loss 0.500\x1b[K", "eval m 0.5000 (during, step 10)",
                                   "\rstep 20/60  loss 0.400\x1b[K", ""]


def test_a_training_without_torchrun_hides_its_noise_but_the_node_script_before_it_is_shown() -> None:
    text = ("stjobs: starting accelerate on vm\n" + format_event("start", rank=0, world_size=1) + "\n"
            + "Some library warning\nstjobs.train: model saved to /x\nValueError: broken\n")
    assert seen(text).splitlines() == [
        "stjobs: starting accelerate on vm", "training None: None with None, 1 process (None), None per step",
        "stjobs.train: model saved to /x", "ValueError: broken",
        HINT1.strip()]


def test_no_hint_when_nothing_was_hidden_and_the_raw_hint_is_the_callers() -> None:
    assert seen("[rank0]:stjobs.train: hi\n") == "stjobs.train: hi\n"
    assert seen("[rank0]:noise\n", raw_hint="stjobs logs j-1 --raw").endswith("not shown: stjobs logs j-1 --raw)\n")


def test_events_only_keeps_the_machine_lines() -> None:
    only = events_only(REAL_LOG)
    assert only.splitlines()[0].startswith('{"backend":"gloo"')  # a JSON object a line, as the events files
    assert [json.loads(line) for line in only.splitlines()] == parse_events(REAL_LOG) and "Column" not in only


def test_view_yields_no_empty_strings() -> None:
    def chunks() -> Iterator[str]:
        yield "[rank0]:noi"
        yield "se\n"
        yield "[rank0]:stjobs.train: x\n"

    assert list(view(chunks(), tty=False)) == ["stjobs.train: x\n", HINT1]


def test_a_chained_traceback_and_torchrun_s_failure_line_are_shown() -> None:
    text = ("[rank0]:Traceback (most recent call last):\n[rank0]:  File \"a.py\", line 1, in <module>\n"
            "[rank0]:KeyError: 1\n[rank0]:\n[rank0]:During handling of the above exception, another exception "
            "occurred:\n[rank0]:\n[rank0]:Traceback (most recent call last):\n[rank0]:  File \"a.py\", line 3\n"
            "[rank0]:ValueError: x\nE1202 torch/distributed/elastic/multiprocessing/api.py: failed (exitcode: 1)\n")
    assert seen(text).splitlines() == [
        "rank 0: Traceback (most recent call last):", 'rank 0:   File "a.py", line 1, in <module>',
        "rank 0: KeyError: 1",
        "rank 0: During handling of the above exception, another exception occurred:",
        "rank 0: Traceback (most recent call last):", 'rank 0:   File "a.py", line 3', "rank 0: ValueError: x",
        "E1202 torch/distributed/elastic/multiprocessing/api.py: failed (exitcode: 1)"]


def test_whole_lines_joins_lines_split_between_chunks() -> None:
    from stjobs.console import whole_lines

    assert list(whole_lines(["a\nb", "c\n", "d", "e"])) == ["a\n", "bc\n", "de"]
    assert list(whole_lines([])) == []


def job_with_output(name: str, module: str | None, output: str) -> str:
    """A finished local job's record, stored spec and console, as the supervisor leaves them."""
    import time

    from stjobs.jobs import JobRecord, jobs_root

    job_dir = jobs_root() / name
    job_dir.mkdir(parents=True)
    JobRecord(job_id=name, backend="local", name=name, job_dir=str(job_dir), submitted_at=time.time(), nodes=1,
              procs_per_node=2).save()
    (job_dir / "status.json").write_text('{"state": "COMPLETED", "exit_code": 0}\n')
    entrypoint = f"module: {module}" if module else "script: train.py"
    (job_dir / "stjobs.yaml").write_text(f"name: {name}\nentrypoint: {{{entrypoint}, args: [--max-steps, 60]}}\n")
    (job_dir / "output.log").write_text(output)
    return name


OUTPUT = ('[rank0]:STJOBS_EVENT {"event":"loss","loss":0.5,"rank":0,"step":10}\n'
          "[rank0]:Some library warning\n[rank1]:tick\n")


@pytest.mark.parametrize("flags, expected", [
    ((), "step 10  loss 0.500\n(2 lines of library output not shown: stjobs logs built-in --raw)\n"),
    (("--raw",), OUTPUT),
    (("--events",), '{"event":"loss","loss":0.5,"rank":0,"step":10}\n'),  # no events/ files: the output's
    (("--rank", "1"), "[rank1]:tick\n"),
])
def test_logs_shows_the_built_in_training_as_progress_unless_asked(
        flags: tuple[str, ...], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs.cli import main

    job = job_with_output("built-in", "stjobs.train", OUTPUT)
    assert main(["logs", job, *flags]) == 0
    assert capsys.readouterr().out == expected


def test_a_scripts_output_is_shown_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs.cli import main

    assert main(["logs", job_with_output("own-script", None, OUTPUT)]) == 0
    assert capsys.readouterr().out == OUTPUT


def test_raw_and_events_are_one_choice(capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs.cli import main

    assert main(["logs", job_with_output("both", "stjobs.train", OUTPUT), "--raw", "--events"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
